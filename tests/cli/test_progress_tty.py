# SPDX-License-Identifier: Apache-2.0
"""Progress on a real terminal: ``export`` of several volumes (``--jobs 2``) run in a pseudo-terminal
whose output is rendered by a VT100 emulator (pyte), and the screen checked as a person sees it: one
clean result line per volume, none glued to a bar, no bar left over, nothing cut at the right edge, and
a read rate that counts bytes actually read, not holes. On a pipe: no progress at all, and the
``--json`` event lines keep their fields."""

from __future__ import annotations

import json
import os
import pty
import random
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from euca2kvm.errors import EXIT_IO
from lvmwriter import Mda, build_pv, linear_lv, vg_text

pyte = pytest.importorskip("pyte")

MiB = 1 << 20
COLS, ROWS = 100, 30
# A terminal run ends well within this; a hung child fails the test instead of hanging the suite.
PTY_TIMEOUT = 120.0
# Volumes: mostly holes (the container file is sparse) with a dense random head, big enough for a
# few refreshes of the live display (rich redraws 10 times a second) yet exported in about a second.
LV_MIB, DATA_MIB = 1024, 48
VOLS = ("vol-7e770001", "vol-7e770002", "vol-7e770003")
# Units rich and euca2kvm print sizes and rates in (binary units).
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
         "kB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}
# Bar characters rich draws (BarColumn); a result line holds none of them.
BAR_CHARS = set("━╸╺")


def sparse_volume(d: Path, vol: str, seed: int) -> None:
    """A container whose LV of LV_MIB MiB holds DATA_MIB MiB of random data at its start, holes after."""
    uuid = f"Tty{seed:03d}" + "z" * 26
    text = vg_text(f"vg-{vol}", f"TtyV{seed:02d}-0000-1111-2222-3333-4444-555555", 1,
                   [("pv0", f"Tty{seed:03d}-zzzz-zzzz-zzzz-zzzz-zzzz-zzzzzz", 2048, LV_MIB // 4)],
                   linear_lv(f"euca-{vol}", f"TtyL{seed:02d}-0000-1111-2222-3333-4444-555555", LV_MIB // 4,
                             tags=f'"{vol}"'))
    img = build_pv(MiB, uuid, [Mda(4096, 64 * 1024, text=text)], MiB)
    rnd = random.Random(seed)
    with open(d / vol, "wb") as f:
        f.write(img)
        for _ in range(DATA_MIB // 8):
            f.write(rnd.randbytes(8 * MiB))
        f.truncate(MiB + LV_MIB * MiB)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ttyvols")
    for i, vol in enumerate(VOLS):
        sparse_volume(d, vol, i + 1)
    return d


def run_in_pty(args: list[str], cols: int = COLS, rows: int = ROWS,
               on_screen: Callable[[Any], None] | None = None, stdout: Any = None) -> tuple[int, Any, str]:
    """Run the CLI with stdout and stderr on one pseudo-terminal of ``cols`` x ``rows``; returns
    (exit code, the final pyte screen, everything written). ``on_screen`` sees the screen after
    every chunk of output: what a person could have seen at that moment. ``stdout``: a file to send
    the standard output to instead."""
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR",
                                                             "TTY_COMPATIBLE", "CI", "TERM")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([sys.executable, "-m", "euca2kvm", *args], stdin=slave, stdout=stdout or slave,
                            stderr=slave, env=env, close_fds=True, start_new_session=True)
    os.close(slave)
    screen = pyte.Screen(cols, rows)
    stream = pyte.ByteStream(screen)
    raw = bytearray()
    deadline = time.monotonic() + PTY_TIMEOUT
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.5)
            if not r:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            raw += data
            stream.feed(data)
            if on_screen is not None:
                on_screen(screen)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, screen, raw.decode("utf-8", "replace")


def lines(screen: Any) -> list[str]:
    return [ln.rstrip() for ln in screen.display]


def size_of(number: str, unit: str) -> float:
    return float(number) * UNITS[unit]


def result_lines(screen: Any) -> dict[str, str]:
    """Result lines by volume id: a screen row starting with the id and ' -> ', joined with the rows it
    wraps onto (up to the next result line or an empty row)."""
    rows = lines(screen)
    found: dict[str, str] = {}
    for i, row in enumerate(rows):
        if row.startswith(tuple(f"{v} -> " for v in VOLS)) or row in {f"{v} ->" for v in VOLS}:  # path folded
            j = i + 1
            while j < len(rows) and rows[j] and not rows[j].startswith(VOLS):
                j += 1
            found[row.split(" ")[0]] = "".join(rows[i:j])
    return found


def squeezed(text: str) -> str:
    return "".join(text.split())


class Frames:
    """What the screen showed while the export ran: the most bars at once, ETAs of the overall bar,
    and any row where a result line and a bar shared a row."""

    def __init__(self) -> None:
        self.most_bars = 0
        self.overall_rows: list[str] = []
        self.glued: list[str] = []
        self.stale: list[str] = []
        self.busiest = ""  # the screen when it last showed the most bars


    def __call__(self, screen: Any) -> None:
        rows = lines(screen)
        bars = [r for r in rows if BAR_CHARS & set(r)]
        if len(bars) >= self.most_bars:  # the latest of the busiest frames: the one with most progress
            self.most_bars, self.busiest = len(bars), "\n".join(rows).rstrip()
        self.overall_rows += [r for r in bars if r.startswith("all volumes")]
        self.glued += [r for r in bars if " -> " in r]
        ended = {r.split(" ")[0] for r in rows if " -> " in r}
        self.stale += [r for r in bars if r.split(" ")[0] in ended]  # the bar of a volume with its result line


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_two_jobs_on_a_terminal_end_in_clean_result_lines(volumes: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out"
    frames = Frames()
    code, screen, raw = run_in_pty(["export", *VOLS, "--source", str(volumes), "-o", str(out), "--jobs", "2",
                                    "--format", fmt], on_screen=frames)
    shown = "\n".join(lines(screen))
    print(f"{frames.busiest}\n-- final screen --\n{shown}")  # for the record (pytest -s)
    assert code == 0, shown
    assert "Traceback" not in raw
    assert "\x1b[?25l" in raw, "no live display was drawn on the terminal"  # rich hides the cursor while live
    # while it ran: at most one bar per job plus the overall one, which has an ETA; no result line on a bar
    assert frames.overall_rows, "no overall bar was ever shown"
    assert 2 <= frames.most_bars <= 3, frames.most_bars
    assert all(re.search(r"\d+:\d\d:\d\d|-:--:--", r) for r in frames.overall_rows), frames.overall_rows[-1]
    assert not frames.glued, frames.glued[0]
    assert not frames.stale, frames.stale[0]
    entries = {e["id"]: e for e in json.loads((out / "manifest.json").read_text())["volumes"]}
    found = result_lines(screen)
    assert set(found) == set(VOLS), shown  # one result line per volume, the last one too
    for vol, text in found.items():
        assert not BAR_CHARS & set(text), text  # not glued onto a bar
        # the whole output path and digest are there (wrapped at most): nothing cut at the edge
        assert squeezed(entries[vol]["output"]) in squeezed(text), text
        assert entries[vol]["digest"] in squeezed(text), text
        m = re.search(r"read\s*([\d.]+)\s*(\w+)\s*at\s*([\d.]+)\s*(\w+)/s", text)
        assert m, text
        read = size_of(m.group(1), m.group(2))
        rate = size_of(m.group(3), m.group(4))
        data = DATA_MIB * MiB  # what there is to read: the rest of the LV is holes
        assert abs(read - data) <= 0.01 * data, text
        # rates of bytes read, not of bytes covered: holes make the covered rate ~20x larger
        assert rate <= 1.05 * data / max(entries[vol]["seconds"], 0.001) + 0.1 * MiB, text
    for row in lines(screen):
        assert not BAR_CHARS & set(row), shown  # no bar left on the screen once the run is over
    assert sum(row.startswith(VOLS) for row in lines(screen)) == len(VOLS), shown  # no duplicate lines


def test_failed_volume_ends_in_an_error_line_and_redirected_results_stay_in_their_file(
        volumes: Path, tmp_path: Path) -> None:
    """A volume failing mid-run (a directory at its output name, exit 5) leaves an error line, not its
    bar; result lines sent to a file go there whole and never reach the screen."""
    out = tmp_path / "out"
    (out / "vol-7e770003.raw").mkdir(parents=True)
    (out / "vol-7e770003.raw" / "keep").write_bytes(b"garbage" * 100)
    frames = Frames()
    with open(tmp_path / "stdout.txt", "w") as f:
        code, screen, raw = run_in_pty(["export", *VOLS, "--source", str(volumes), "-o", str(out), "--jobs", "2"],
                                       on_screen=frames, stdout=f)
    shown = "\n".join(lines(screen))
    assert code == EXIT_IO, shown
    assert "Traceback" not in raw and "\x1b[?25l" in raw
    assert (out / "vol-7e770003.raw" / "keep").read_bytes() == b"garbage" * 100
    assert not frames.glued, frames.glued[0]
    rows = lines(screen)
    assert not any(BAR_CHARS & set(r) for r in rows), shown
    assert any("vol-7e770003" in r for r in rows), shown  # the error names the volume
    assert not any(" -> " in r for r in rows), shown  # result lines went to the file, not the screen
    results = (tmp_path / "stdout.txt").read_text().splitlines()
    assert sorted(r.split(" ")[0] for r in results) == sorted(VOLS[:2]), results
    assert not any("\x1b" in r or BAR_CHARS & set(r) for r in results), results


def test_live_display_rates_count_bytes_read(volumes: Path, tmp_path: Path) -> None:
    """Every rate the live display ever showed stays below what the data of the volume allows."""
    out = tmp_path / "out"
    code, _screen, raw = run_in_pty(["export", *VOLS[:2], "--source", str(volumes), "-o", str(out), "--jobs", "2",
                                     "--workers", "1"])
    assert code == 0
    entries = json.loads((out / "manifest.json").read_text())["volumes"]
    # A volume's read rate is bounded by its data over the shortest time it can have taken.
    most = sum(e["bytes_read"] for e in entries) / min(e["seconds"] for e in entries)
    rates = [size_of(n, u) for n, u in re.findall(r"([\d.]+) (\w?i?B)/s", raw)]
    assert rates, "the live display showed no rate"
    assert max(rates) <= 1.5 * most + MiB, (max(rates), most)


def test_pipe_shows_no_progress_and_json_events_keep_their_fields(volumes: Path, tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "euca2kvm", "export", *VOLS[:2], "--source", str(volumes),
                        "-o", str(tmp_path / "a"), "--jobs", "2"], capture_output=True, text=True, timeout=PTY_TIMEOUT)
    assert p.returncode == 0, p.stderr
    assert "\x1b" not in p.stdout + p.stderr and not BAR_CHARS & set(p.stdout + p.stderr)
    assert sorted(ln.split(" ")[0] for ln in p.stdout.splitlines()) == sorted(VOLS[:2])
    p = subprocess.run([sys.executable, "-m", "euca2kvm", "export", *VOLS[:2], "--source", str(volumes),
                        "-o", str(tmp_path / "b"), "--jobs", "2", "--json"], capture_output=True, text=True,
                       timeout=PTY_TIMEOUT)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    events = [json.loads(ln) for ln in p.stdout.splitlines()]
    fields = {"start": {"event", "time", "id", "size"}, "progress": {"event", "time", "id", "done", "size"},
              "done": {"event", "time", "id", "entry"}}
    for e in events:
        assert set(e) == fields[e["event"]], e
        assert list(e)[:2] == ["event", "time"]
    for vol in VOLS[:2]:
        mine = [e for e in events if e.get("id") == vol]
        assert [e["event"] for e in mine][0] == "start" and mine[-1]["event"] == "done"
        assert mine[-2]["event"] == "progress" and mine[-2]["done"] == mine[-2]["size"] == LV_MIB * MiB
