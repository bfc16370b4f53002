# SPDX-License-Identifier: Apache-2.0
"""The one batch runner of ``export`` and ``export-instance`` (cli/batch.py): Ctrl-C in the middle of a
copy on a terminal cancels every job, leaves no partial file, says only "interrupted" and exits 130, the
same for both commands; export-instance records each disk's manifest entry once, with its domain and
seed, and the re-run of an unchanged instance records nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from _env import need_tools
from cli.test_progress_tty import lines, run_in_pty
from euca2kvm.errors import EXIT_SIGINT
from lvmwriter import Mda, build_pv, linear_lv, vg_text

MiB = 1 << 20
# Dense volumes hashed twice (block digest and plain sha256, both SHA-256) by one worker each: the copy
# takes a few seconds on this machine, long enough to be interrupted in its middle.
DENSE_MIB = 256
SLOW = ("--block-digest", "sha256", "--sha256", "--workers", "1")
VOLS = ("vol-ba7c0001", "vol-ba7c0002")
INSTANCE = "i-ba7c0001"
# A copy starts well within this once the command runs; a stuck one fails the test instead of hanging it.
START_TIMEOUT_S = 60.0


def dense(d: Path, vol: str, mib: int, seed: int) -> None:
    """A container (written by tests/lvmwriter.py, no lvm2 needed) whose LV of ``mib`` MiB is random."""
    uid = f"Bat{seed:03d}" + "q" * 26
    dashed = uid[:6] + "-" + "-".join(uid[6 + 4 * i: 10 + 4 * i] for i in range(5)) + "-" + uid[26:]
    text = vg_text(f"vg-{vol}", f"BatV{seed:02d}-0000-1111-2222-3333-4444-555555", 1,
                   [("pv0", dashed, 2048, mib // 4)],
                   linear_lv(f"euca-{vol}", f"BatL{seed:02d}-0000-1111-2222-3333-4444-555555", mib // 4,
                             tags=f'"{vol}"'))
    rnd = random.Random(seed)
    with open(d / vol, "wb") as f:
        f.write(build_pv(MiB, uid, [Mda(4096, 64 * 1024, text=text)], MiB))
        for _ in range(mib // 8):
            f.write(rnd.randbytes(8 * MiB))


def inventory(d: Path) -> Path:
    inst = {"id": INSTANCE, "state": "stopped", "root_device": "/dev/sda", "kernel_id": None,
            "vm_type": {"name": "m1.small", "cpus": 1, "memory_mib": 512},
            "attachments": [{"volume_id": v, "device": dev, "is_root": i == 0, "kind": "boot" if i == 0 else "runtime"}
                            for i, (v, dev) in enumerate(zip(VOLS, ("/dev/sda", "/dev/sdb"), strict=True))]}
    f = d.parent / f"{d.name}-inventory.json"
    f.write_text(json.dumps({"format": "euca2kvm-inventory", "version": 1, "source": "test",
                             "captured_at": "2026-01-01T00:00:00Z", "volumes_dir": str(d),
                             "instances": [inst], "storage_volumes": []}))
    return f


def make(tmp: Path, mib: int) -> tuple[Path, Path]:
    d = tmp / f"vols{mib}"
    d.mkdir()
    for i, v in enumerate(VOLS):
        dense(d, v, mib, i + 1)
    return d, inventory(d)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make(tmp_path_factory.mktemp("batch"), DENSE_MIB)


def interrupt_when_copying(out: Path, pid: list[int]) -> threading.Thread:
    """A thread that sends SIGINT to the command's process group (what Ctrl-C on its terminal does)
    as soon as a copy is under way: a private work directory exists in OUTDIR and holds data."""

    def watch() -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            busy = [p for p in out.glob(".*.partial") if any(f.stat().st_blocks for f in p.iterdir() if f.is_file())] \
                if out.is_dir() else []
            if busy and pid:
                os.killpg(pid[0], signal.SIGINT)
                return
            time.sleep(0.01)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("cmd", ["export", "export-instance"])
def test_ctrl_c_mid_copy_cancels_every_job_the_same_for_both_commands(big: tuple[Path, Path], tmp_path: Path,
                                                                      cmd: str) -> None:
    d, inv = big
    out = tmp_path / "out"
    out.mkdir()
    victim = out / "unrelated.bin"
    victim.write_bytes(random.Random(9).randbytes(4096))  # a stranger's file in OUTDIR: left as it is
    before = victim.read_bytes()
    args = ([cmd, *VOLS, "-s", str(d)] if cmd == "export" else [cmd, INSTANCE, "--inventory", str(inv)])
    pids: list[int] = []
    watcher = None

    def on_screen(_: Any) -> None:
        nonlocal watcher
        if watcher is None:  # the first output: the process runs; find its group from OUTDIR's work dirs
            watcher = interrupt_when_copying(out, pids)

    import subprocess

    real_popen = subprocess.Popen

    def popen(*a: Any, **k: Any) -> Any:
        p = real_popen(*a, **k)
        pids.append(p.pid)
        return p

    subprocess.Popen = popen  # type: ignore[misc]
    try:
        code, screen, raw = run_in_pty([*args, "-o", str(out), "--jobs", "2", *SLOW], on_screen=on_screen)
    finally:
        subprocess.Popen = real_popen  # type: ignore[misc]
    shown = "\n".join(lines(screen))
    assert code == EXIT_SIGINT, (code, shown)
    assert "Traceback" not in raw and shown.count("interrupted") == 1, shown
    assert "error" not in shown.replace("interrupted", ""), shown  # no job's own failure reported
    # no image, no partial work directory, no manifest entry; the stranger's file untouched
    assert sorted(p.name for p in out.iterdir() if p.name != "manifest.json") == ["unrelated.bin"], list(out.iterdir())
    assert not (out / "manifest.json").exists() or json.loads((out / "manifest.json").read_text())["volumes"] == []
    assert victim.read_bytes() == before


def test_export_instance_records_each_disk_once_with_its_domain(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from euca2kvm import cli
    from euca2kvm.export import manifest

    d, inv = make(tmp_path, 8)
    out = tmp_path / "out"
    calls: list[dict[str, Any]] = []
    real = manifest.record

    def counting(outdir: Path, entry: dict[str, Any], fsync: bool = True) -> None:
        calls.append(entry)
        real(outdir, entry, fsync)

    monkeypatch.setattr(manifest, "record", counting)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # main() installs its own
    args = ["export-instance", INSTANCE, "--inventory", str(inv), "-o", str(out), "--jobs", "2"]
    assert cli.main(args) == 0
    per_output = Counter(e["output"] for e in calls)
    assert len(per_output) == 2 and set(per_output.values()) == {1}, per_output
    assert all(e["domain"] and e["seed"] for e in calls)  # in the one record, not added by a second one
    entries = json.loads((out / "manifest.json").read_text())["volumes"]
    assert {e["output"] for e in entries} == set(per_output)
    for e in entries:
        assert Path(e["domain"]).is_file() and Path(e["seed"]["output"]).is_file()
    calls.clear()
    assert cli.main(args) == 0  # unchanged: both disks reused, nothing recorded again
    assert calls == []
    assert cli.main([*args, "--no-seed"]) == 0  # reused, but the seed is gone: one record per disk says so
    assert Counter(e["output"] for e in calls) == per_output and all(e["seed"] is None for e in calls)
    assert all(e["seed"] is None for e in json.loads((out / "manifest.json").read_text())["volumes"])


@pytest.mark.parametrize("flags", [(), ("--fsync",)])
def test_a_batch_flushes_its_manifest_once_unless_each_volume_is_flushed(tmp_path: Path,
                                                                         flags: tuple[str, ...]) -> None:
    """Per volume the manifest is only replaced atomically (its flush would commit the journal with the
    image, under the directory lock); the batch flushes it once at its end. --fsync flushes each."""
    need_tools("strace")
    d, _ = make(tmp_path, 8)
    out, log = tmp_path / "out", tmp_path / "strace.log"
    # -ff: one log per thread, so two threads' calls never print as "<unfinished ...>" / "resumed" halves
    p = subprocess.run(["strace", "-ff", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o", str(log),
                        sys.executable, "-m", "euca2kvm", "export", "--all", "-s", str(d), "-o", str(out),
                        "--jobs", "2", *flags], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert sorted(e["id"] for e in json.loads((out / "manifest.json").read_text())["volumes"]) == list(VOLS)
    lines = [line for f in tmp_path.glob("strace.log.*") for line in f.read_text().splitlines()]
    calls = [line for line in lines if "sync(" in line and "= 0" in line]
    manifests = [c for c in calls if "manifest.json" in c]
    assert len(manifests) == (len(VOLS) if flags else 1), calls
    assert any(f"<{out}>" in c for c in calls), calls  # the directory too: the rename is durable
