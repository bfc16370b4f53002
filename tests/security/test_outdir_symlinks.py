# SPDX-License-Identifier: Apache-2.0
"""Symlinks and non-regular files planted in OUTDIR are never followed, replaced or renamed.

Victims are files outside OUTDIR; whatever the run's outcome, their bytes and mode stay as they
were. Planted at every name a writer used to predict (fixed temporary names, final names), before
the run and repeatedly from a thread while it runs, for raw and qcow2 (raw driver and NBD),
the manifest and the ``--libvirt`` files; boot-test's log/screenshot writer directly.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from _env import need_tools
from euca2kvm.errors import EXIT_FORMAT, EXIT_IO, IOFailure
from euca2kvm.kvm.boottest import BootResult, Stage

VOL = "vol-5ec00001"
EXT = {"raw": "raw", "qcow2": "qcow2"}
RACE_SECONDS = 8.0  # per case: several exports of a small volume fit in it
CASES = [("raw", False), ("qcow2", False), ("qcow2", True)]  # qcow2 split: through the NBD server


def fixed_temporaries(ext: str) -> list[str]:
    """Every temporary name an earlier version predicted."""
    return [f".{VOL}.{ext}.partial", f".{VOL}.{ext}.old", ".manifest.json.partial", f".{VOL}.virt-install.sh.partial",
            f".{VOL}.{ext}.partial.raw", f".{VOL}.{ext}.boot", f"{VOL}.{ext}.boot.log", f"{VOL}.{ext}.boot.png"]


def export_args(src: Path, out: Path, fmt: str) -> list[str]:
    return ["export", VOL, "--source", str(src), "-o", str(out), "--format", fmt, "--libvirt", "--workers", "1"]


def _check_published(out: Path, fmt: str, cli: Callable[..., Any]) -> None:
    final = out / f"{VOL}.{EXT[fmt]}"
    assert stat.S_ISREG(final.lstat().st_mode)
    entries = json.loads((out / "manifest.json").read_text())["volumes"]
    assert [e["output"] for e in entries] == [str(final.resolve())]
    for name in (f"{VOL}.xml", f"{VOL}.virt-install.sh"):
        assert stat.S_ISREG((out / name).lstat().st_mode)
    cli("verify", str(out / "manifest.json"))


@pytest.mark.parametrize("fmt, split", CASES)
def test_symlinks_at_temporary_names_are_never_followed(tmp_path: Path, fmt: str, split: bool, cli: Any,
                                                        volume: Any, victim: Any, hidden: Any) -> None:
    need_tools("qemu-img")
    src = tmp_path / "vols"
    src.mkdir()
    volume(src, VOL, 8, split=split)
    out = tmp_path / "out"
    out.mkdir()
    planted = {}
    for name in fixed_temporaries(EXT[fmt]):
        v = victim(name.lstrip("."))
        (out / name).symlink_to(v.path)
        planted[name] = v
    cli(*export_args(src, out, fmt))
    assert all(v.unchanged() for v in planted.values())
    assert hidden(out) == sorted(n for n in planted if n.startswith("."))  # only the planted links are left
    assert all((out / n).is_symlink() for n in planted)
    _check_published(out, fmt, cli)


@pytest.mark.parametrize("name, kind, code", [
    (f"{VOL}.raw", "symlink", EXIT_FORMAT),  # leads out of OUTDIR: refused as an output name
    (f"{VOL}.raw", "dir", EXIT_IO), (f"{VOL}.qcow2", "fifo", EXIT_IO),
    (f"{VOL}.qcow2", "dir", EXIT_IO), (f"{VOL}.xml", "symlink", EXIT_IO),
    (f"{VOL}.virt-install.sh", "symlink", EXIT_IO),
    ("manifest.json", "symlink", EXIT_FORMAT),  # read (not JSON): refused before anything is written
])
def test_non_regular_file_at_a_final_name_is_refused(tmp_path: Path, name: str, kind: str, code: int, cli: Any,
                                                     volume: Any, victim: Any, hidden: Any) -> None:
    need_tools("qemu-img")
    src = tmp_path / "vols"
    src.mkdir()
    volume(src, VOL, 8)
    out = tmp_path / "out"
    out.mkdir()
    v = victim()
    target = out / name
    if kind == "symlink":
        target.symlink_to(v.path)
    elif kind == "dir":
        target.mkdir()
        (target / "inside").write_bytes(b"keep")
    else:
        os.mkfifo(target)
    fmt = "qcow2" if name.endswith(".qcow2") else "raw"
    p = cli(*export_args(src, out, fmt), check=code)
    assert p.stderr.strip()
    assert v.unchanged()
    st = target.lstat()
    assert {"symlink": stat.S_ISLNK, "dir": stat.S_ISDIR, "fifo": stat.S_ISFIFO}[kind](st.st_mode)
    if kind == "dir":
        assert (target / "inside").read_bytes() == b"keep"
    assert hidden(out) == []
    image = out / f"{VOL}.{EXT[fmt]}"
    if name == image.name:  # the image itself refused: nothing published, nothing recorded
        assert sorted(os.listdir(out)) == [name]


@pytest.mark.parametrize("fmt, split", CASES)
def test_symlinks_planted_while_exporting_are_never_followed(tmp_path: Path, fmt: str, split: bool, cli: Any,
                                                             volume: Any, victim: Any) -> None:
    need_tools("qemu-img")
    src = tmp_path / "vols"
    src.mkdir()
    volume(src, VOL, 16, split=split)
    ext = EXT[fmt]
    names = fixed_temporaries(ext)  # final names are refused before the run (test above), so every run must succeed
    victims = {n: victim(f"v{i}") for i, n in enumerate(names)}
    deadline = time.monotonic() + RACE_SECONDS
    rounds = 0
    while time.monotonic() < deadline or rounds < 2:
        rounds += 1
        out = tmp_path / f"out{rounds}"
        out.mkdir()
        stop = threading.Event()

        def plant(out: Path = out, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                for n in names:
                    p = out / n
                    try:
                        if p.is_symlink():
                            p.unlink()  # re-plant: a fresh window every pass
                        p.symlink_to(victims[n].path)
                    except OSError:
                        pass  # our own file is there now
                time.sleep(0.001)

        t = threading.Thread(target=plant, daemon=True)
        t.start()
        try:
            p = cli(*export_args(src, out, fmt), check=None)
        finally:
            stop.set()
            t.join(10)
        assert p.returncode == 0, p.stderr[-2000:]
        assert all(v.unchanged() for v in victims.values()), p.stderr[-2000:]
        for n in os.listdir(out):  # nothing of ours is left but finished, regular files
            assert (out / n).is_symlink() or stat.S_ISREG((out / n).lstat().st_mode), n
            assert not n.startswith(".") or (out / n).is_symlink(), n
        _check_published(out, fmt, cli)
    assert rounds >= 2


def test_boot_test_log_and_screenshot_writer(tmp_path: Path, victim: Any) -> None:
    from euca2kvm.cli.kvm_cmds import keep_beside

    image = tmp_path / f"{VOL}.qcow2"
    image.write_bytes(b"img")
    shot = tmp_path / "screen.png"
    shot.write_bytes(b"\x89PNG fake")
    res = BootResult(image, "qcow2", "tcg", Stage.LOGIN, "ok", 1.0, serial="login: ", screenshot=shot)
    log, png = tmp_path / f"{image.name}.boot.log", tmp_path / f"{image.name}.boot.png"
    v1, v2 = victim("log"), victim("png")
    log.symlink_to(v1.path)
    png.symlink_to(v2.path)
    with pytest.raises(IOFailure):
        keep_beside(image, res, strict=True)
    assert keep_beside(image, res) is None
    assert v1.unchanged() and v2.unchanged() and log.is_symlink() and png.is_symlink()
    log.unlink()
    png.unlink()
    assert keep_beside(image, res, strict=True) == png
    assert log.read_text() == "login: " and png.read_bytes() == b"\x89PNG fake"
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith(".")) == []
