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


def _runtime_dirs(pid: int) -> list[str]:
    return [n for n in os.listdir(tempfile.gettempdir()) if n.startswith(f"euca2kvm-nbd-{pid}-")]


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
    proc = _start(src, out)

    def serving() -> bool:
        if long_path:
            return any(os.path.exists(os.path.join(tempfile.gettempdir(), d, "nbd.sock"))
                       for d in _runtime_dirs(proc.pid))
        return any((out / d / "nbd.sock").exists() for d in hidden(out))

    _kill_when(proc, serving)
    assert not (out / f"{VOL}.qcow2").exists()
    stale_tmp = _runtime_dirs(proc.pid)
    assert bool(stale_tmp) == long_path  # a socket in OUTDIR's work directory needs no other directory
    stale_file = out / f".manifest.json.{proc.pid}-0badf00d.partial"
    stale_file.write_text("{")  # a dead run's temporary file
    cli("export", VOL, "--source", str(src), "-o", str(out), "--format", "qcow2")
    assert hidden(out) == [] and _runtime_dirs(proc.pid) == []
    assert sorted(os.listdir(out)) == ["manifest.json", f"{VOL}.qcow2"]
    cli("verify", str(out / "manifest.json"))


def test_enospc_writing_the_manifest_restores_the_earlier_image(tmp_path: Path, volume: Any, cli: Any,
                                                                hidden: Any) -> None:
    need_root()
    need_tools("mount", "umount")
    src = tmp_path / "src"
    src.mkdir()
    volume(src, VOL, 8)
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], check=True, timeout=30)
    try:
        args = ["export", VOL, "--source", str(src), "-o", str(mnt)]
        cli(*args)
        image = mnt / f"{VOL}.raw"
        before = (image.stat().st_ino, hashlib.sha256(image.read_bytes()).hexdigest(),
                  (mnt / "manifest.json").read_bytes())
        st = os.statvfs(mnt)
        filler = mnt / "filler"  # leave room for the new image and not one page more
        with open(filler, "wb") as f:
            f.write(b"\xff" * (st.f_bavail * st.f_frsize - 8 * MiB))
        p = cli(*args, "--overwrite", check=EXIT_IO)
        assert "manifest.json" in p.stderr
        after = (image.stat().st_ino, hashlib.sha256(image.read_bytes()).hexdigest(),
                 (mnt / "manifest.json").read_bytes())
        assert after == before  # the earlier image, still the one recorded
        assert hidden(mnt) == [] and sorted(os.listdir(mnt)) == ["filler", "manifest.json", f"{VOL}.raw"]
        filler.unlink()
        cli("verify", str(mnt / "manifest.json"))
        assert json.loads((mnt / "manifest.json").read_text())["volumes"][0]["output"] == str(image)
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)
