# SPDX-License-Identifier: Apache-2.0
"""The last defects of issue 13: result lines on a narrow terminal fold between words, a snap-*.gz in
a volumes directory is planned once, ``scan --json`` carries the notes (raw in JSON, escaped on a
terminal), and ``boot-test`` writes its screenshot and log where asked, not into the export directory."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _env import need_tools
from cli.test_progress_tty import lines, run_in_pty
from clirun import euca2kvm
from euca2kvm.errors import EXIT_USAGE, EXIT_VERIFY
from lvmwriter import Mda, build_pv, linear_lv, vg_text

MiB = 1 << 20
CLI_TIMEOUT_S = 120
BOOT_TIMEOUT_S = "4"  # SeaBIOS reports "no bootable device" within a second under TCG
# An LV without a volume id: its id is VG/LV, 52 characters, wider than a 40-column terminal.
VG, LV = "acme-production-database-vg", "primary-root-disk-volume"
LONG_ID = f"{VG}/{LV}"
# Times and rates differ from run to run: compared as "#".
NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return euca2kvm(*args, check=None, timeout=CLI_TIMEOUT_S)


def container(path: Path, vg: str, lv: str, mib: int, seed: int, tags: str = "") -> None:
    uid = f"Dfc{seed:03d}" + "w" * 26
    dashed = uid[:6] + "-" + "-".join(uid[6 + 4 * i: 10 + 4 * i] for i in range(5)) + "-" + uid[26:]
    text = vg_text(vg, f"DfcV{seed:02d}-0000-1111-2222-3333-4444-555555", 1, [("pv0", dashed, 2048, mib // 4)],
                   linear_lv(lv, f"DfcL{seed:02d}-0000-1111-2222-3333-4444-555555", mib // 4, tags=tags))
    with open(path, "wb") as f:
        f.write(build_pv(MiB, uid, [Mda(4096, 64 * 1024, text=text)], MiB))
        f.write(random.Random(seed).randbytes(mib * MiB))


def split_words(rows: list[str], line: str, cols: int) -> list[str]:
    """The words of ``line`` that the rows showing it split between two rows (rows follow each other,
    the first starts the line). Words wider than ``cols`` cannot help being split; they are not listed."""
    words, bad, i = [NUMBER.sub("#", w) for w in line.split()], [], 0
    partial = ""
    for row in rows:
        if i >= len(words):
            break
        tokens = [NUMBER.sub("#", t) for t in row.split()]
        for k, tok in enumerate(tokens):
            want = words[i][len(partial):]
            if tok == want:
                i, partial = i + 1, ""
            elif want.startswith(tok) and k == len(tokens) - 1:  # the word goes on on the next row
                partial += tok
                if len(words[i]) <= cols:
                    bad.append(words[i])
            else:
                raise AssertionError(f"row {row!r} does not continue {line!r} (at {want!r})")
    assert i == len(words), (rows, line)
    return bad


@pytest.mark.parametrize("cols", [40, 80])
def test_result_line_folds_between_words(tmp_path: Path, cols: int) -> None:
    d = tmp_path / "vols"
    d.mkdir()
    container(d / "database.img", VG, LV, 8, 1)
    piped = cli("export", str(d / "database.img"), "-o", str(tmp_path / "piped"))
    assert piped.returncode == 0, piped.stderr
    line = next(ln for ln in piped.stdout.splitlines() if ln.startswith(LONG_ID))  # piped: one line
    out = tmp_path / "tty"
    code, screen, raw = run_in_pty(["export", str(d / "database.img"), "-o", str(out)], cols=cols)
    assert code == 0 and "Traceback" not in raw, raw
    rows = lines(screen)
    first = next(i for i, r in enumerate(rows) if r and LONG_ID.startswith(r.split()[0]))
    expected = line.replace(str(tmp_path / "piped"), str(out))
    assert split_words(rows[first:], expected, cols) == [], "\n".join(rows)
    if cols > len(LONG_ID):
        assert rows[first].split()[0] == LONG_ID  # the id whole, on the first row


def test_plan_lists_a_snapshot_object_in_a_directory_once(tmp_path: Path) -> None:
    d = tmp_path / "vols"
    d.mkdir()
    container(d / "vol-dfc00001", "euca-ebs-storage-vg-vol-dfc00001", "euca-vol-dfc00001", 8, 2,
              tags='"vol-dfc00001"')
    (d / "snap-dfc00002.gz").write_bytes(gzip.compress(random.Random(3).randbytes(MiB)))
    p = cli("plan", "-s", str(d), "-o", str(tmp_path / "out"), "--json")
    assert p.returncode == 0, p.stderr  # no name collision of the object with itself
    plan = json.loads(p.stdout)
    ids = [v["volume_id"] for v in plan["volumes"]] + [g["id"] for g in plan["gzip_objects"]]
    assert sorted(ids) == ["snap-dfc00002", "vol-dfc00001"], ids
    assert not [b for b in plan["blockers"] if b["kind"] == "name-collision"]
    assert not (tmp_path / "out").exists()


def test_scan_json_carries_the_notes_raw_and_the_terminal_sees_them_escaped(tmp_path: Path) -> None:
    d = tmp_path / "vols"
    d.mkdir()
    container(d / "vol-dfc00003", "euca-ebs-storage-vg-vol-dfc00003", "euca-vol-dfc00003", 8, 4,
              tags='"vol-dfc00003"')
    (d / "vol-dfc00003Qx7bZk").write_bytes(bytes(4096))  # an interrupted snapshot's temporary file
    hostile = "notes\x1b]0;owned\x07.txt"
    (d / hostile).write_bytes(b"not a volume")
    p = cli("scan", str(d), "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [v["id"] for v in doc["volumes"]] == ["vol-dfc00003"]
    notes = {Path(n["path"]).name: n for n in doc["notes"]}
    assert set(notes) == {"vol-dfc00003Qx7bZk", hostile}  # the name exactly as it is
    assert all(n["what"] == "ignored" and n["reason"] for n in notes.values())
    code, screen, raw = run_in_pty(["scan", str(d)], cols=200)
    assert code == 0 and "\x1b]0;" not in raw and "\x07" not in raw
    shown = "\n".join(lines(screen))
    assert "notes\\x1b]0;owned\\x07.txt" in shown and "vol-dfc00003Qx7bZk" in shown


def test_boot_test_keeps_its_screenshot_and_log_where_asked_not_beside_the_image(tmp_path: Path) -> None:
    need_tools("qemu-system-x86_64", "qemu-img")
    export = tmp_path / "export"
    export.mkdir()
    image = export / "blank.raw"
    image.write_bytes(bytes(4 * MiB))  # no boot loader: SeaBIOS gives up at once, exit 6
    before = sorted(p.name for p in export.iterdir())
    run = tmp_path / "run"
    run.mkdir()
    env = {**os.environ, "EUCA2KVM_ACCEL": "tcg"}

    def boot_test(*extra: str) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "euca2kvm", "boot-test", str(image), "--timeout", BOOT_TIMEOUT_S,
                            *extra], capture_output=True, text=True, timeout=CLI_TIMEOUT_S, cwd=run, env=env)
        assert p.returncode == EXIT_VERIFY and "Traceback" not in p.stderr, (p.returncode, p.stderr)
        return p

    boot_test()  # by default: the current directory
    assert sorted(p.name for p in export.iterdir()) == before  # no stray file in the export directory
    assert (run / "blank.raw.boot.log").is_file()
    elsewhere = tmp_path / "artifacts" / "night-1"
    boot_test("--artifacts", str(elsewhere))  # created when missing
    assert (elsewhere / "blank.raw.boot.log").is_file()
    assert sorted(p.name for p in export.iterdir()) == before
    victim = tmp_path / "a-file"
    victim.write_bytes(b"victim")
    p = subprocess.run([sys.executable, "-m", "euca2kvm", "boot-test", str(image), "--artifacts", str(victim)],
                       capture_output=True, text=True, timeout=CLI_TIMEOUT_S, cwd=run, env=env)
    assert p.returncode == EXIT_USAGE and "Traceback" not in p.stderr and victim.read_bytes() == b"victim"
