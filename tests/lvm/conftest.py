# SPDX-License-Identifier: Apache-2.0
"""Kernel ground-truth fixtures of tests/data/dm (see its README), shared by the dm-* reader tests.

The four xz containers are unpacked once per session into sparse files; ``fx`` gives their
paths, ``truth.json`` and helpers (linear LV maps from lvm's own report, hashing, an in-memory
byte source for corrupted copies).
"""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path
from typing import Any

import pytest

from euca2kvm.lvm.extents import ExtentMap, LinearMapper
from euca2kvm.lvm.reader import ExtentReader

DATA = Path(__file__).resolve().parent.parent / "data" / "dm"
MIB = 1 << 20
UNPACK_CHUNK = 64 << 10  # all-zero chunks of this size become holes in the unpacked file
HASH_STEP = 4 * MIB  # read size when hashing an LV


def unpack(src: Path, dst: Path) -> None:
    """xz -> sparse file (zero 64 KiB runs become holes)."""
    with lzma.open(src) as fi, dst.open("wb") as fo:
        while chunk := fi.read(UNPACK_CHUNK):
            if chunk.count(0) == len(chunk):
                fo.seek(len(chunk), 1)
            else:
                fo.write(chunk)
        fo.truncate()


class Mem:
    """An in-memory LV (for corrupted copies of on-disk structures)."""

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = bytes(data)
        self.size = len(self.data)

    def pread(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


class DmFixtures:
    def __init__(self, truth: dict[str, Any], directory: Path) -> None:
        self.truth = truth
        self.dir = directory

    @property
    def containers(self) -> list[str]:
        return sorted(self.truth["containers"])

    def path(self, container: str) -> Path:
        return self.dir / container

    def fresh_copy(self, container: str, dst_dir: Path, name: str | None = None) -> Path:
        """A new sparse copy of a container (for tests that damage it)."""
        dst = dst_dir / (name or container)
        unpack(DATA / self.truth["containers"][container]["xz"], dst)
        return dst

    def lv(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.truth["lvs"][name]
        return info

    def lv_map(self, lv: str) -> ExtentMap:
        """ExtentMap of a linear LV from lvm's own segment report (pe_start + PE ranges)."""
        info = self.lv(lv)
        mappers = []
        for seg in info["segments"]:
            assert seg["type"] == "linear" and len(seg["pe_ranges"]) == 1
            r = seg["pe_ranges"][0]
            off = self.truth["pvs"][r["pv"]]["pe_start"] + r["first"] * info["extent_size"]
            mappers.append(LinearMapper(seg["start"], seg["size"], str(self.dir / r["pv"]), off))
        return ExtentMap(info["size"], mappers)

    @staticmethod
    def sha(emap: ExtentMap, step: int = HASH_STEP) -> str:
        h = hashlib.sha256()
        with ExtentReader(emap) as r:
            for off in range(0, emap.size, step):
                h.update(r.pread(off, min(step, emap.size - off)))
        return h.hexdigest()

    @staticmethod
    def mem(data: bytes | bytearray) -> Mem:
        return Mem(data)


@pytest.fixture(scope="session")
def fx(tmp_path_factory: pytest.TempPathFactory) -> DmFixtures:
    truth = json.loads((DATA / "truth.json").read_text())
    d = tmp_path_factory.mktemp("dm")
    for name, c in truth["containers"].items():
        unpack(DATA / c["xz"], d / name)
        assert (d / name).stat().st_size == c["size"]
    return DmFixtures(truth, d)
