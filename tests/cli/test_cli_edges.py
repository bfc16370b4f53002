# SPDX-License-Identifier: Apache-2.0
"""The command line's rough edges (issue 13): one rule for volume IDs, honest errors for files that are
no volume, Ctrl-C that says only "interrupted", human output without Python reprs or doubled ids,
aligned verify columns, -o naming a file, --version, and help that shows every default."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from _env import need_tools
from clirun import euca2kvm
from euca2kvm.cli import build_parser
from euca2kvm.errors import EXIT_FORMAT, EXIT_IN_USE, EXIT_SIGINT, EXIT_USAGE, EXIT_VERIFY
from lvmwriter import Mda, build_pv, linear_lv, vg_text

DEMO = Path(__file__).resolve().parents[2] / "demo" / "volumes.tar.xz"
VOL = "vol-0de0a001"
CLI_TIMEOUT_S = 120
MiB = 1 << 20


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return euca2kvm(*args, check=None, timeout=CLI_TIMEOUT_S, cwd=cwd)


@pytest.fixture
def vols(tmp_path: Path) -> Path:
    """The demo volumes directory (containers made by the real lvm2, see demo/build-volumes.sh)."""
    d = tmp_path / "vols"
    d.mkdir()
    with tarfile.open(DEMO) as t:
        t.extractall(d, filter="data")
    return d


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_container_path_is_an_id_for_export_as_for_inspect(vols: Path, tmp_path: Path) -> None:
    path = vols / VOL
    before = sha(path)
    info = json.loads(cli("inspect", str(path), "--json", "--no-guest").stdout)
    assert info["volume"]["id"] == VOL
    out = tmp_path / "out"
    p = cli("export", str(path), "-o", str(out))  # no --source: the path is the source
    assert p.returncode == 0, p.stderr
    assert "/var/lib/eucalyptus" not in p.stderr
    (entry,) = json.loads((out / "manifest.json").read_text())["volumes"]
    assert entry["id"] == VOL and Path(entry["output"]) == out / f"{VOL}.raw"
    # the same path with a --source naming another directory, and relative to the working directory
    other = tmp_path / "empty"
    other.mkdir()
    assert cli("export", str(path), "-s", str(other), "-o", str(tmp_path / "o2")).returncode == 0
    assert cli("export", VOL, "-o", str(tmp_path / "o3"), cwd=vols).returncode == 0
    # the id and the path of one volume are one export
    p = cli("export", VOL, str(path), "-s", str(vols), "-o", str(tmp_path / "o4"), "--json")
    assert p.returncode == 0 and sum('"event": "done"' in ln for ln in p.stdout.splitlines()) == 1
    assert sha(path) == before


@pytest.mark.parametrize("cmd", ["inspect", "export"])
def test_a_non_file_id_says_what_is_wrong_with_it(vols: Path, tmp_path: Path, cmd: str) -> None:
    out = tmp_path / "out"
    for ident in ("/dev/null", str(vols)):
        p = cli(cmd, ident, *(["-o", str(out)] if cmd == "export" else []))
        assert p.returncode == EXIT_USAGE, (ident, p.stderr)
        assert ident in p.stderr and "/var/lib/eucalyptus" not in p.stderr, p.stderr
    assert not out.exists(), "a refused export left its output directory behind"


def test_explicit_non_lvm_file_is_exit_3_and_ignored_in_a_directory(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    plain = d / "passwd"
    plain.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 40)
    snap = d / "snap-0de0c001"  # a raw snapshot file: no LVM label by design, it is the disk
    snap.write_bytes(bytes(MiB))
    p = cli("scan", str(plain), "--json")
    assert p.returncode == EXIT_FORMAT and str(plain) in p.stderr and p.stdout == "", (p.stdout, p.stderr)
    listed = json.loads(cli("scan", str(d), "--json").stdout)["volumes"]
    assert [(v["id"], v["kind"]) for v in listed] == [("snap-0de0c001", "snapshot")]
    assert [(v["id"], v["kind"]) for v in json.loads(cli("scan", str(snap), "--json").stdout)["volumes"]] == [
        ("snap-0de0c001", "snapshot")]
    out = tmp_path / "out"
    p = cli("export", str(plain), "-o", str(out))
    assert p.returncode == EXIT_FORMAT and str(plain) in p.stderr and not out.exists(), p.stderr
    # inspect still reads a file that is no container as an image (guest section only)
    p = cli("inspect", str(plain), "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["image"] == str(plain), p.stderr


def test_scan_source_option_equals_the_positional(vols: Path) -> None:
    by_pos = json.loads(cli("scan", str(vols), "--json").stdout)
    by_opt = json.loads(cli("scan", "-s", str(vols), "--json").stdout)
    assert by_pos == by_opt and len(by_opt["volumes"]) == 3


def test_inspect_prints_no_reprs_and_the_types_scan_prints(vols: Path) -> None:
    scan = {v["id"]: v for v in json.loads(cli("scan", str(vols), "--json").stdout)["volumes"]}
    for vid in ("vol-0de0a001", "vol-0de0a002"):
        p = cli("inspect", vid, "-s", str(vols))
        assert p.returncode == 0, p.stderr
        for repr_mark in ("['", "{'", "':", "[]", "None"):
            assert repr_mark not in p.stdout, (repr_mark, p.stdout)
        shown = re.findall(r"^\s+segment\d+: .* type=(\S+)", p.stdout, re.M)
        assert shown and sorted(set(shown)) == sorted(scan[vid]["segment_types"]), (shown, p.stdout)


def test_help_shows_every_default_and_inspect_has_a_description() -> None:
    assert cli("--version").stdout.startswith("euca2kvm ")
    parser = build_parser([])
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sp in sub.choices.items():
        assert sp.description, name
        text = " ".join(cli(name, "--help").stdout.split())
        for a in sp._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help, (name, a.option_strings or a.dest)
            d = a.default
            if a.option_strings and d not in (None, True, False, [], argparse.SUPPRESS):
                shown = f"{d:g}" if isinstance(d, float) else str(d)
                said = rf"default:? '?{re.escape(shown)}\b|\b{re.escape(shown)} \(default\)"
                assert re.search(said, text), (name, a.option_strings, d)


def test_output_naming_a_file_is_a_usage_error(vols: Path, tmp_path: Path) -> None:
    victim = tmp_path / "afile"
    victim.write_bytes(b"keep me")
    p = cli("export", VOL, "-s", str(vols), "-o", str(victim))
    assert p.returncode == EXIT_USAGE and str(victim) in p.stderr and "File exists" not in p.stderr, p.stderr
    inv = tmp_path / "inventory.json"
    inv.write_text(json.dumps({
        "format": "euca2kvm-inventory", "version": 1, "source": "test", "captured_at": "2024-05-01T10:00:00Z",
        "volumes_dir": str(vols), "storage_volumes": [],
        "instances": [{"id": "i-0de0a001", "state": "stopped", "root_device": "/dev/sda", "kernel_id": None,
                       "vm_type": {"name": "m1.small", "cpus": 1, "memory_mib": 256},
                       "attachments": [{"volume_id": VOL, "device": "/dev/sda", "is_root": True, "kind": "boot"}]}]}))
    p = cli("export-instance", "i-0de0a001", "--inventory", str(inv), "-o", str(victim))
    assert p.returncode == EXIT_USAGE and str(victim) in p.stderr and "File exists" not in p.stderr, p.stderr
    assert victim.read_bytes() == b"keep me"


def test_in_use_message_names_the_volume_once(vols: Path, tmp_path: Path) -> None:
    with open(vols / VOL, "rb") as f:
        holder = subprocess.Popen(["sleep", "60"], stdin=f)
    try:
        p = cli("export", VOL, "-s", str(vols), "-o", str(tmp_path / "out"))
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert p.returncode == EXIT_IN_USE, p.stderr
    assert f"{VOL}: " in p.stderr and f"{VOL}: {VOL}" not in p.stderr and f"{VOL}: {VOL} " not in p.stderr, p.stderr


def test_verify_columns_line_up_and_the_failure_line_is_plain(vols: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli("export", "--all", "-s", str(vols), "-o", str(out)).returncode == 0
    man = json.loads((out / "manifest.json").read_text())
    man["volumes"][0]["digest"] = "blkblake3-4m:" + "0" * 64  # a mismatch
    (out / "manifest.json").write_text(json.dumps(man))
    p = cli("verify", str(out / "manifest.json"))
    assert p.returncode == EXIT_VERIFY, p.stderr
    rows = p.stdout.splitlines()
    assert len(rows) == 3 and rows[0].split()[0] == "mismatch", rows
    for col in (1, 2):  # the id and output columns start at one offset in every row
        starts = {r.index(" " + r.split()[col] + " ") for r in rows}
        assert len(starts) == 1, (col, rows)
    err = p.stderr.strip().splitlines()[-1]
    assert man["volumes"][0]["id"] in err and not set("[]{}\"") & set(err), err


def dense_volume(d: Path, vol: str, mib: int) -> Path:
    """A container (PV written by tests/lvmwriter.py) with a random, incompressible LV of ``mib`` MiB."""
    text = vg_text(f"vg-{vol}", "EdgesV-0000-1111-2222-3333-4444-555555", 1,
                   [("pv0", "Edges0-yyyy-yyyy-yyyy-yyyy-yyyy-yyyyyy", 2048, mib // 4)],
                   linear_lv(f"euca-{vol}", "EdgesL-0000-1111-2222-3333-4444-555555", mib // 4, tags=f'"{vol}"'))
    img = build_pv(MiB, "Edges0" + "y" * 26, [Mda(4096, 64 * 1024, text=text)], MiB)
    rnd = random.Random(13)
    with open(d / vol, "wb") as f:
        f.write(img)
        for _ in range(mib // 8):
            f.write(rnd.randbytes(8 * MiB))
    return d / vol


def _converting(marker: str) -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"convert" in argv and any(marker.encode() in a for a in argv):
            return True
    return False


def test_ctrl_c_during_qemu_img_convert_says_only_interrupted(tmp_path: Path) -> None:
    """Ctrl-C on a terminal signals the whole process group: qemu-img dies of SIGINT as well."""
    need_tools("qemu-img")
    d = tmp_path / "vols"
    d.mkdir()
    dense_volume(d, "vol-c7c00001", 256)
    out = tmp_path / "out-ctrl-c"
    proc = subprocess.Popen([sys.executable, "-m", "euca2kvm", "export", "vol-c7c00001", "-s", str(d),
                             "-o", str(out), "--format", "qcow2", "--compress", "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _converting(str(out)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the export ended before qemu-img convert could be interrupted"
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.returncode == EXIT_SIGINT, err
    assert "exit status" not in err and "Traceback" not in err and err.count("interrupted") == 1, err
    assert not (out / "vol-c7c00001.qcow2").exists() and not list(out.glob(".*.partial"))
