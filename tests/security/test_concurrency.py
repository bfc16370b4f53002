# SPDX-License-Identifier: Apache-2.0
"""Concurrent runs into one OUTDIR: no manifest entry lost, no temporary shared or published by
the wrong run; a second export of an output a live run is writing is refused (exit 4)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _env import need_tools
from euca2kvm.errors import EXIT_IN_USE
from euca2kvm.export import manifest

ROUNDS = 4  # rounds of 4 concurrent exports (the old thread lock lost entries in about 1 of 4)
PROCS = 4
RECORDS = 200  # per process, for the direct record() test
RUN_TIMEOUT = 300
START_TIMEOUT = 60  # seconds for an export to start writing its image

RECORD_LOOP = """
import sys
from pathlib import Path
from euca2kvm.export import manifest
out, tag, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(n):
    manifest.record(out, {"id": f"{tag}-{i:03d}", "output": f"/nowhere/{tag}-{i:03d}.raw"})
"""


def _export(src: Path, vol: str, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "euca2kvm", "export", vol, "--source", str(src), "-o", str(out),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _writing(out: Path, hidden: Any) -> bool:
    """An export into ``out`` has started writing its image (a partial file, or one in its work directory)."""
    return any((out / d).is_file() or (out / d / "image").exists() for d in hidden(out))


def test_four_concurrent_exports_keep_every_entry(tmp_path: Path, volume: Any, cli: Any, hidden: Any) -> None:
    vols = [f"vol-c0c0000{i}" for i in range(PROCS)]
    srcs = []
    for i, v in enumerate(vols):  # one directory each: no run opens another's container
        d = tmp_path / f"src{i}"
        d.mkdir()
        volume(d, v, 8, seed=i)
        srcs.append(d)
    for r in range(ROUNDS):
        out = tmp_path / f"out{r}"
        out.mkdir()
        procs = [_export(s, v, out) for s, v in zip(srcs, vols, strict=True)]
        for p in procs:
            _, err = p.communicate(timeout=RUN_TIMEOUT)
            assert p.returncode == 0 and "Traceback" not in err, err[-2000:]
        entries = json.loads((out / "manifest.json").read_text())["volumes"]
        assert sorted(e["id"] for e in entries) == vols, f"round {r}"
        assert hidden(out) == []
    cli("verify", str(out / "manifest.json"))


def test_two_processes_recording_200_entries_each_keep_400(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", RECORD_LOOP, str(tmp_path), tag, str(RECORDS)],
                              stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=RUN_TIMEOUT)
        assert p.returncode == 0, err[-2000:]
    ids = [e["id"] for e in manifest.load(tmp_path)["volumes"]]
    assert len(ids) == 2 * RECORDS and len(set(ids)) == 2 * RECORDS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_same_output_twice_at_once_is_refused_and_never_mixes(tmp_path: Path, volume: Any, cli: Any,
                                                              hidden: Any) -> None:
    need_tools("qemu-img")
    src = tmp_path / "src"
    src.mkdir()
    vol = "vol-c0c0dddd"
    volume(src, vol, 64, split=True)
    out = tmp_path / "out"
    out.mkdir()
    first = _export(src, vol, out, "--format", "qcow2", "--workers", "1")
    deadline = time.monotonic() + START_TIMEOUT
    while not _writing(out, hidden) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert first.poll() is None, "the first export ended before the second started"
    first.send_signal(signal.SIGSTOP)  # converting (no OUTDIR lock held): frozen while the second runs
    try:
        # --force: past the check that the source is open elsewhere, to the output directory itself
        p = cli("export", vol, "--source", str(src), "-o", str(out), "--format", "qcow2", "--force",
                check=EXIT_IN_USE)
        assert str(first.pid) in p.stderr
        assert not (out / f"{vol}.qcow2").exists()
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=RUN_TIMEOUT)
    assert first.returncode == 0, err[-2000:]
    entries = json.loads((out / "manifest.json").read_text())["volumes"]
    assert [e["output"] for e in entries] == [str((out / f"{vol}.qcow2").resolve())]
    assert hidden(out) == []
    cli("verify", str(out / "manifest.json"))
