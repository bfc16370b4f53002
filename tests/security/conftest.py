# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the output-directory hardening tests: containers made by tests/lvmwriter.py, the
CLI in a subprocess, and victim files outside OUTDIR whose bytes and mode must never change."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from lvmwriter import Mda, build_pv, vg_text

MiB = 1 << 20
EXTENT = 4 * MiB  # lvmwriter's default extent size (8192 sectors)
CLI_TIMEOUT = 300  # seconds; every command here takes a few


def _lv(name: str, extents: int, split: bool, tag: str) -> str:
    """A linear LV; ``split`` maps its two halves swapped (two segments: exported through NBD)."""
    half = extents // 2
    segs = [(0, extents, 0)] if not split else [(0, half, half), (half, extents - half, 0)]
    body = "".join(f"segment{i + 1} {{\nstart_extent = {start}\nextent_count = {count}\ntype = \"striped\"\n"
                   f"stripe_count = 1\n\nstripes = [\n\"pv0\", {pe}\n]\n}}\n"
                   for i, (start, count, pe) in enumerate(segs))
    return (f'{name} {{\nid = "SecLV0-0000-1111-2222-3333-4444-555555"\nstatus = ["READ", "WRITE", "VISIBLE"]\n'
            f"flags = []\ntags = [\"{tag}\"]\nsegment_count = {len(segs)}\n\n{body}}}\n")


def write_volume(d: Path, vol: str, mib: int, split: bool = False, seed: int = 7) -> Path:
    """Container file ``d/vol``: one PV, one VG, one LV of ``mib`` MiB of random bytes tagged ``vol``."""
    extents = mib * MiB // EXTENT
    text = vg_text(f"vg-{vol}", "SecVG0-0000-1111-2222-3333-4444-555555", 1,
                   [("pv0", "SecPV0-yyyy-yyyy-yyyy-yyyy-yyyy-yyyyyy", 2048, extents)],
                   _lv(f"euca-{vol}", extents, split, vol))
    img = build_pv(MiB, "SecPV0" + "y" * 26, [Mda(4096, 64 * 1024, text=text)], MiB)
    rnd = random.Random(seed)
    path = d / vol
    with open(path, "wb") as f:
        f.write(img)
        for _ in range(mib):
            f.write(rnd.randbytes(MiB))
    return path


def run_cli(*args: str, check: int | None = 0, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``euca2kvm ARGS`` in a subprocess; never a traceback, and the exit code ``check`` unless None."""
    p = subprocess.run([sys.executable, "-m", "euca2kvm", *args], capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    return p


@dataclass
class Victim:
    """A file outside OUTDIR that a planted symlink points at."""

    path: Path
    sha256: str
    mode: int

    def unchanged(self) -> bool:
        st = os.lstat(self.path)
        return (st.st_mode, hashlib.sha256(self.path.read_bytes()).hexdigest()) == (self.mode, self.sha256)


@pytest.fixture
def victim(tmp_path: Path) -> Callable[[str], Victim]:
    """Factory: a victim file of 4 KiB of known bytes, mode 0600, outside every OUTDIR."""
    d = tmp_path / "victims"
    d.mkdir()

    def make(name: str = "victim") -> Victim:
        p = d / name
        data = os.urandom(4096)
        p.write_bytes(data)
        os.chmod(p, 0o600)
        return Victim(p, hashlib.sha256(data).hexdigest(), os.lstat(p).st_mode)

    return make


def leftovers(outdir: Path) -> list[str]:
    """Hidden names in ``outdir``: temporaries, work directories (none may outlive a run)."""
    return sorted(n for n in os.listdir(outdir) if n.startswith("."))


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli


@pytest.fixture
def volume() -> Callable[..., Path]:
    return write_volume


@pytest.fixture
def hidden() -> Callable[[Path], list[str]]:
    return leftovers
