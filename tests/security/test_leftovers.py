# SPDX-License-Identifier: Apache-2.0
"""Nothing accumulates: a SIGKILLed export's work directory and NBD socket directory are removed
by the next run; ENOSPC while the manifest is written leaves no published-but-unrecorded image
(the earlier export is restored) and no temporary."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from _env import need_root, need_tools
from euca2kvm.errors import EXIT_IO

MiB = 1 << 20
VOL = "vol-1ef70001"
START_TIMEOUT = 60  # seconds for the export to reach its NBD server
LONG = "d" * 90  # makes OUTDIR/<work dir>/nbd.sock longer than a unix socket path may be (107 bytes)


def _start(src: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "euca2kvm", "export", VOL, "--source", str(src), "-o", str(out),
                             "--format", "qcow2", "--workers", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _nbd_dirs() -> set[str]:
    """NBD socket directories in the system temporary directory (any run's, any naming)."""
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("euca2kvm-nbd-")}


def _owned_by_live_process(name: str) -> bool:
    """``euca2kvm-nbd-<pid>-XXXXXXXX`` of a running process (another test's, say)."""
    pid = name.removeprefix("euca2kvm-nbd-").split("-")[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    return True


def _kill_when(proc: subprocess.Popen[str], ready: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the export ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


@pytest.mark.parametrize("long_path", [False, True], ids=["socket-in-outdir", "socket-in-tmp"])
def test_sigkill_during_an_nbd_export_then_rerun_leaves_nothing(tmp_path: Path, long_path: bool, volume: Any,
                                                                 cli: Any, hidden: Any,
                                                                 request: pytest.FixtureRequest) -> None:
    need_tools("qemu-img")
    src = tmp_path / "src"
    src.mkdir()
    volume(src, VOL, 128, split=True)  # two segments: served by our NBD server
    if long_path:
        out = tmp_path / LONG
        out.mkdir()
    else:  # a short OUTDIR (as /srv/export): the socket fits in its work directory
        out = Path(tempfile.mkdtemp(prefix="e2k-"))
        request.addfinalizer(lambda: shutil.rmtree(out, ignore_errors=True))
    before = _nbd_dirs()
    proc = _start(src, out)

    def sockets() -> list[str]:
        tmp = [d for d in _nbd_dirs() - before if os.path.exists(os.path.join(tempfile.gettempdir(), d, "nbd.sock"))]
        return tmp + [d for d in hidden(out) if (out / d / "nbd.sock").exists()]

    _kill_when(proc, sockets)
    assert not (out / f"{VOL}.qcow2").exists()
    killed = [d for d in _nbd_dirs() - before if not _owned_by_live_process(d)]
    assert bool(killed) == long_path  # a socket in OUTDIR's work directory needs no directory in /tmp
    stale_file = out / f".manifest.json.{proc.pid}-0badf00d.partial"
    stale_file.write_text("{")  # a dead run's temporary file
    cli("export", VOL, "--source", str(src), "-o", str(out), "--format", "qcow2")
    assert hidden(out) == []
    assert [d for d in killed if os.path.lexists(os.path.join(tempfile.gettempdir(), d))] == []
    assert sorted(os.listdir(out)) == ["manifest.json", f"{VOL}.qcow2"]
    cli("verify", str(out / "manifest.json"))


def _fill_leaving(mnt: Path, room: int) -> Path:
    """A filler file leaving exactly ``room`` bytes free on the filesystem of ``mnt``."""
    st = os.statvfs(mnt)
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        f.write(b"\xff" * (st.f_bavail * st.f_frsize - room))
    return filler


@pytest.mark.parametrize("earlier", [False, True], ids=["first-export", "overwrite"])
def test_enospc_writing_the_manifest_leaves_no_unrecorded_image(tmp_path: Path, earlier: bool, volume: Any,
                                                               cli: Any, hidden: Any) -> None:
    need_root()
    need_tools("mount", "umount")
    src = tmp_path / "src"
    src.mkdir()
    volume(src, VOL, 8)
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], check=True, timeout=30)
    try:
        args = ["export", VOL, "--source", str(src), "-o", str(mnt), "--overwrite"]
        image = mnt / f"{VOL}.raw"
        before = None
        if earlier:
            cli(*args)
            before = (image.stat().st_ino, hashlib.sha256(image.read_bytes()).hexdigest(),
                      (mnt / "manifest.json").read_bytes())
        filler = _fill_leaving(mnt, 8 * MiB)  # room for the new image and not one page more
        p = cli(*args, check=EXIT_IO)
        assert "manifest.json" in p.stderr
        assert hidden(mnt) == []
        if not earlier:  # nothing published that the manifest does not record
            assert sorted(os.listdir(mnt)) == ["filler"]
            return
        after = (image.stat().st_ino, hashlib.sha256(image.read_bytes()).hexdigest(),
                 (mnt / "manifest.json").read_bytes())
        assert after == before  # the earlier image, still the one recorded
        assert sorted(os.listdir(mnt)) == ["filler", "manifest.json", f"{VOL}.raw"]
        filler.unlink()
        cli("verify", str(mnt / "manifest.json"))
        assert json.loads((mnt / "manifest.json").read_text())["volumes"][0]["output"] == str(image)
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)
