# SPDX-License-Identifier: Apache-2.0
"""The output-directory writer: no symlink followed, nothing but regular files replaced, an
inter-process lock, private work directories, publish-and-record with rollback, stale sweeps."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from euca2kvm import safefs
from euca2kvm.errors import EXIT_IN_USE, EXIT_IO, InUseError, IOFailure
from euca2kvm.outdir import OutDir, temp_name, write_atomic
from euca2kvm.safefs import open_new_or_truncate, read_bounded, runtime_dir

HOLD = """
import sys, time
from euca2kvm.outdir import OutDir
with OutDir(sys.argv[1]) as od, od.{what}:
    print("ready", flush=True)
    time.sleep(60)
"""


def _victim(tmp_path: Path) -> tuple[Path, bytes]:
    v = tmp_path / "victim"
    v.write_bytes(b"precious")
    os.chmod(v, 0o600)
    return v, b"precious"


def _holder(out: Path, what: str) -> subprocess.Popen[str]:
    """Another process holding ``OutDir(out).<what>`` until killed."""
    p = subprocess.Popen([sys.executable, "-c", HOLD.format(what=what), str(out)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait(timeout=10)
    return p.pid


def test_write_file_refuses_a_symlink_and_never_follows_one(tmp_path: Path) -> None:
    victim, data = _victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.xml").symlink_to(victim)
    with OutDir(out) as od:
        with pytest.raises(IOFailure) as ei:  # a symlink at the final name is refused ...
            od.write_file("a.xml", "new\n")
        assert ei.value.exit_code == EXIT_IO
        (out / "a.xml").unlink()
        (out / f"{temp_name('a.xml')}").symlink_to(victim)  # ... and a temporary name is never reused
        od.write_file("a.sh", "#!/bin/sh\n", mode=0o755)
    assert victim.read_bytes() == data and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "a.sh").lstat().st_mode) == 0o755 and (out / "a.sh").read_text() == "#!/bin/sh\n"
    assert not [n for n in os.listdir(out) if n.startswith(".") and not os.path.islink(out / n)]


@pytest.mark.parametrize("kind", ["dir", "fifo"])
def test_non_regular_final_name_is_refused_untouched(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "x.raw"
    if kind == "dir":
        target.mkdir()
        (target / "keep").write_text("k")
    else:
        os.mkfifo(target)
    with OutDir(out) as od, od.work("x.raw") as work:
        fd = work.create("image")
        os.write(fd, b"img")
        os.close(fd)
        with pytest.raises(IOFailure):
            od.publish(work, "image", "x.raw")
        with pytest.raises(IOFailure):
            od.write_file("x.raw", b"data")
    assert (target.is_dir() and (target / "keep").read_text() == "k") if kind == "dir" else stat.S_ISFIFO(
        target.lstat().st_mode)
    assert sorted(os.listdir(out)) == ["x.raw"]


def test_work_dir_is_private_and_removed(tmp_path: Path) -> None:
    with OutDir(tmp_path) as od:
        with od.work("v.qcow2") as work:
            assert stat.S_IMODE(work.path.lstat().st_mode) == 0o700 and work.path.name.endswith(".partial")
            fd = work.create("image")
            os.close(fd)
            with pytest.raises(IOFailure):  # O_EXCL: never an existing file
                work.create("image")
            os.symlink("/etc/hostname", work.file("link"))
            with pytest.raises(IOFailure):  # O_NOFOLLOW
                work.create("link")
        assert os.listdir(tmp_path) == []


def test_publish_moves_the_previous_aside_and_rolls_back_a_failed_commit(tmp_path: Path) -> None:
    final = tmp_path / "v.raw"
    final.write_bytes(b"old export")
    ino = final.stat().st_ino
    with OutDir(tmp_path) as od:
        with od.work("v.raw") as work:
            fd = work.create("image")
            os.write(fd, b"new export")
            os.close(fd)

            def fail() -> None:
                assert final.read_bytes() == b"new export"  # in place while the manifest is written
                raise IOFailure("No space left on device")

            with pytest.raises(IOFailure):
                od.publish(work, "image", "v.raw", commit=fail)
        assert final.read_bytes() == b"old export" and final.stat().st_ino == ino
        assert os.listdir(tmp_path) == ["v.raw"]
        with od.work("v.raw") as work:
            fd = work.create("image")
            os.write(fd, b"new export")
            os.close(fd)
            od.publish(work, "image", "v.raw", commit=lambda: None)
    assert final.read_bytes() == b"new export" and os.listdir(tmp_path) == ["v.raw"]


def test_lock_is_inter_process_and_reentrant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with OutDir(tmp_path) as od, od.lock(), od.lock():  # re-entrant in one thread
        pass
    holder = _holder(tmp_path, "lock()")
    try:
        with OutDir(tmp_path) as od:
            t0 = time.monotonic()
            with pytest.raises(InUseError) as ei, od.lock(timeout=0.3):
                pass
            assert ei.value.exit_code == EXIT_IN_USE and time.monotonic() - t0 < 5
    finally:
        holder.kill()
        holder.wait(timeout=10)
    with OutDir(tmp_path) as od, od.lock(timeout=5):  # released when its holder died
        pass
    assert os.listdir(tmp_path) == []  # the lock is the directory itself: no lock file


def test_live_work_dir_refuses_the_same_output_and_dead_ones_are_swept(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("k")
    out = tmp_path / "out"
    out.mkdir()
    (out / f".v.raw.{_dead_pid()}-0123abcd.partial").symlink_to(outside)  # our pattern, but a symlink
    holder = _holder(out, 'work("v.raw")')
    try:
        with OutDir(out) as od:
            with pytest.raises(InUseError) as ei, od.work("v.raw"):
                pass
            assert str(holder.pid) in str(ei.value)
            with od.work("w.raw"):  # another output is fine
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    assert len([n for n in os.listdir(out) if n.startswith(".v.raw.")]) == 2  # the dead run's work dir is left ...
    with OutDir(out) as od, od.work("v.raw"):
        pass
    assert [n for n in os.listdir(out)] == [n for n in os.listdir(out) if os.path.islink(out / n)]  # ... until now
    assert (outside / "keep").read_text() == "k"


def test_runtime_dirs_of_dead_processes_are_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safefs.tempfile, "gettempdir", lambda: str(tmp_path))
    outside = tmp_path / "outside"
    outside.mkdir()
    dead = _dead_pid()
    stale = tmp_path / f"euca2kvm-nbd-{dead}-abcd_123"
    stale.mkdir()
    (stale / "nbd.sock").write_text("")
    (tmp_path / f"euca2kvm-nbd-{dead}-zzzzzzzz").symlink_to(outside)
    live = tmp_path / f"euca2kvm-nbd-{os.getppid()}-abcdefgh"
    live.mkdir()
    new = Path(runtime_dir("euca2kvm-nbd-"))
    assert new.is_dir() and stat.S_IMODE(new.stat().st_mode) == 0o700 and new.name.startswith(
        f"euca2kvm-nbd-{os.getpid()}-")
    assert not stale.exists() and live.exists() and outside.is_dir()
    assert (tmp_path / f"euca2kvm-nbd-{dead}-zzzzzzzz").is_symlink()


def test_single_file_helpers_refuse_symlinks_and_bound_reads(tmp_path: Path) -> None:
    victim, data = _victim(tmp_path)
    link = tmp_path / "qemu.log"
    link.symlink_to(victim)
    with pytest.raises(IOFailure):
        open_new_or_truncate(link)
    with pytest.raises(IOFailure):
        read_bounded(link, 100)
    with pytest.raises(IOFailure):
        read_bounded(victim, 4)
    assert read_bounded(victim, 8) == data
    assert write_atomic(tmp_path / "inv.json", "{}", mode=0o600).read_text() == "{}"
    assert victim.read_bytes() == data and stat.S_IMODE(victim.stat().st_mode) == 0o600
