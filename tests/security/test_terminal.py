# SPDX-License-Identifier: Apache-2.0
"""Names read from containers reach a terminal only escaped.

Containers written by tests/lvmwriter.py hold VG/LV names and tags made of terminal escapes (ESC,
BEL, OSC, CSI, the one-character C1 CSI/OSC U+009B/U+009D, bidi overrides and isolates, a
carriage return); a file in the volumes directory is named like one. ``scan``, ``inspect``,
``plan`` and ``export`` (its refusals and errors, a usage error, -vv logging) run to a pipe and
in a real pseudo-terminal: no hostile sequence appears verbatim, no control character reaches
the output but line feeds (and, on the terminal, the cursor and colour codes rich itself
writes), and every name is still there in its escaped form. ``--json`` stays JSON and keeps
the names exactly.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import random
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import tty
from pathlib import Path

import pytest

from euca2kvm.cli.console import visible
from lvmwriter import Mda, build_pv, linear_lv, vg_text

MiB = 1 << 20
# Each command reads two 5 MiB containers; a minute means it hung.
RUN_TIMEOUT_S = 60
# Wide enough that no table cell of these names is folded, so the escaped names stay whole.
COLUMNS = 250

# LVM words (section names) cannot hold whitespace, brackets, quotes or "=": these use ESC 7/c,
# the one-character CSI and OSC, BEL and bidi controls. Tags are quoted strings: anything goes.
VG = "vg\x1b7\x9b2J\x9d0;pwned\x07\u202eevil\u2066"
LV = "lv\x1bc\x07\u202dx\x9b31m"
TAG = "\x1b]0;retitled\x07\x1b[2JA\rB\u2067"
VG_R = "vgR\x9b2J\u202e"  # its LV has an "error" segment: refused
LV_R = "lvR\x1b7\x9d1;x\x07"
JUNK = "\x1b]0;file\x07\x1b[2JF\rG"  # a file name in the volumes directory
HOSTILE = (VG, LV, TAG, VG_R, LV_R, JUNK)
# Sequences that must never reach the output verbatim.
NEEDLES = ("\x1b7", "\x1bc", "\x9b", "\x9d", "\x1b]", "\x07", "\x1b[2J", "A\rB", "F\rG",
           "\u202d", "\u202e", "\u2066", "\u2067")
# What rich writes on a terminal itself: colours and styles, hiding/showing the cursor, and the
# live display's carriage return, erase-line and cursor-up.
RICH_CODES = re.compile(r"\x1b\[[0-9;]*m|\x1b\[\?25[hl]|\x1b\[2K|\x1b\[[0-9]*A|\r")
UNSAFE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def _pv(d: Path, name: str, n: int, vg: str, lvs: str) -> None:
    uuid = f"Hostl{n}" + "a" * 26
    text = vg_text(vg, f"HostV{n}-0000-1111-2222-3333-4444-555555", 1,
                   [("pv0", f"Hostl{n}-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaaa", 2048, 1)], lvs)
    img = build_pv(MiB, uuid, [Mda(4096, 64 * 1024, text=text)], MiB)
    with open(d / name, "wb") as f:
        f.write(img)
        f.write(random.Random(n).randbytes(4 * MiB))


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile") / "volumes"
    d.mkdir()
    tag = TAG.replace("\\", "\\\\").replace('"', '\\"')
    _pv(d, "c-hostile", 0, VG, linear_lv(LV, "HostL0-0000-1111-2222-3333-4444-555555", 1, tags=f'"{tag}"'))
    refused = (f'{LV_R} {{\nid = "HostL1-0000-1111-2222-3333-4444-555555"\nstatus = ["READ", "WRITE", "VISIBLE"]\n'
               'flags = []\nsegment_count = 1\n\nsegment1 {\nstart_extent = 0\nextent_count = 1\n'
               'type = "error"\n}\n}\n')
    _pv(d, "c-refused", 1, VG_R, refused)
    (d / JUNK).write_bytes(b"not a container\n" * 1024)
    return d


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR", "COLUMNS", "LINES")}
    return {**env, "TERM": "xterm-256color", "COLUMNS": str(COLUMNS), "LINES": "50"}


def _commands(vols: Path, out: Path) -> list[list[str]]:
    src = ["--source", str(vols)]
    return [
        ["scan", str(vols)],
        ["-vv", "inspect", f"{VG}/{LV}", *src],
        ["inspect", f"{VG_R}/{LV_R}", *src],
        ["plan", "-o", str(out), *src],
        ["export", "--all", "-o", str(out), *src],
        ["export", f"{VG_R}/{LV_R}", "-o", str(out), *src],
        ["export", f"vol-{JUNK}", "-o", str(out), *src],  # unknown id: a usage error quoting it
        ["scan", f"--{JUNK}"],  # argparse's own error message
    ]


def _pipe(args: list[str]) -> tuple[int, str]:
    p = subprocess.run([sys.executable, "-m", "euca2kvm", *args], capture_output=True, env=_env(),
                       timeout=RUN_TIMEOUT_S)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "backslashreplace")


def _pty(args: list[str]) -> tuple[int, str]:
    """Run with stdin, stdout and stderr on a pseudo-terminal in raw mode (no newline translation)."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, COLUMNS, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "euca2kvm", *args], stdin=slave, stdout=slave, stderr=slave,
                            env=_env(), start_new_session=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([master], [], [], max(left, 0))
            if not ready:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"{args[:2]} hung on the terminal")
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO: every writer closed its side
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
    return proc.wait(timeout=RUN_TIMEOUT_S), out.decode("utf-8", "backslashreplace")


def _check(args: list[str], rc: int, out: str, terminal: bool) -> None:
    what = (args[:2], rc, out[-3000:])
    assert rc in (0, 2, 3, 4, 5, 6), what
    assert "Traceback" not in out, what
    for needle in NEEDLES:
        assert needle not in out, (needle, *what)
    shown = RICH_CODES.sub("", out) if terminal else out
    assert not UNSAFE.search(shown), (UNSAFE.search(shown), *what)


def _expected(args: list[str]) -> list[str | tuple[str, ...]]:
    """Escaped names each command must still show (a tuple: one of them)."""
    cmd = next(a for a in args if not a.startswith("-"))
    if cmd == "scan" and len(args) == 2 and args[1].startswith("--"):
        return [visible(JUNK)]
    if cmd == "inspect" and VG in args[-3]:
        return [visible(VG), visible(LV), visible(TAG)]
    if cmd in ("inspect", "export") and VG_R in args[-5 if cmd == "export" else -3]:
        return [visible(f"{VG_R}/{LV_R}")]
    if cmd == "export" and JUNK in args[1]:  # the message may quote the id as a Python literal
        return [(visible(JUNK), visible(repr(JUNK)[1:-1]))]
    if cmd == "plan":  # ten columns: the long VG/LV is folded inside its cell
        return [visible(VG), visible(f"{VG_R}/{LV_R}"), visible(JUNK)]
    return [visible(f"{VG}/{LV}"), visible(f"{VG_R}/{LV_R}")]


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "pty"])
def test_hostile_names_are_escaped_everywhere(volumes: Path, tmp_path: Path, terminal: bool) -> None:
    for args in _commands(volumes, tmp_path / "out"):
        rc, out = (_pty if terminal else _pipe)(args)
        _check(args, rc, out, terminal)
        shown = RICH_CODES.sub("", out) if terminal else out
        for names in _expected(args):
            assert any(n in shown for n in ((names,) if isinstance(names, str) else names)), (
                args[:2], names, out[-3000:])


def test_scan_json_keeps_names_exactly(volumes: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "euca2kvm", "scan", str(volumes), "--json"], capture_output=True,
                       env=_env(), timeout=RUN_TIMEOUT_S)
    assert p.returncode == 0, p.stderr
    raw = p.stdout.decode()
    assert not UNSAFE.search(raw.replace("\n", "")) and not any(n in raw for n in NEEDLES)
    vols = {(v["vg"], v["lv"]): v for v in json.loads(raw)["volumes"]}
    assert set(vols) == {(VG, LV), (VG_R, LV_R)}
    assert vols[(VG, LV)]["tags"] == [TAG]


def test_internal_error_report_is_escaped(tmp_path: Path) -> None:
    """A bug's traceback (exit 1) quotes exception messages, which can hold names: escaped too."""
    code = ("import sys\nfrom euca2kvm import cli\nimport euca2kvm.cli.scan_cmd as s\n"
            "def boom(args):\n    raise RuntimeError(sys.argv[1])\n"
            "s.do_scan = boom\nsys.exit(cli.main(['scan']))\n")
    p = subprocess.run([sys.executable, "-c", code, TAG], capture_output=True, env=_env(), timeout=RUN_TIMEOUT_S)
    err = p.stderr.decode("utf-8", "backslashreplace")
    assert p.returncode == 1 and "Traceback" in err and "RuntimeError" in err, err
    assert not any(n in err for n in NEEDLES) and not UNSAFE.search(err), err
    assert visible(TAG) in err
