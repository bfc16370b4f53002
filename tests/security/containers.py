# SPDX-License-Identifier: Apache-2.0
"""Overlay containers for the name and changing-source tests, written with tests/lvmwriter.py.

One PV per file, one VG with one linear LV, 4 MiB extents, the data filled with seeded random
bytes. The metadata can be rewritten in place (new seqno, another VG or LV uuid, the LV moved)
with the data and the file size kept, as lvm2 run on the host would leave it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lvmwriter import Mda, build_pv, linear_lv, vg_text

MiB = 1 << 20
EXTENT = 4 * MiB
PE_START = MiB
MDA = Mda(4096, 64 * 1024)  # where lvm2 puts the first metadata area: 60 KiB of ring


def _uuid(kind: str, n: int) -> str:
    """A 32-character lvm2 uuid, unique per (kind, n)."""
    return (kind[:6].ljust(6, "X") + f"{n:026d}")[:32]


def dashed(u: str) -> str:
    return u[:6] + "-" + "-".join(u[6 + 4 * i : 10 + 4 * i] for i in range(5)) + "-" + u[26:]


@dataclass
class Container:
    path: Path
    vg: str
    lv: str
    n: int  # makes the PV, VG and LV uuids
    pe_count: int
    extents: int  # of the LV
    start_pe: int = 0
    seqno: int = 1
    tags: str = ""
    lv_uuid_n: int | None = None  # another LV uuid (default: from n)
    vg_uuid_n: int | None = None

    def head(self) -> bytes:
        text = vg_text(self.vg, dashed(_uuid("VgIdVg", self.vg_uuid_n if self.vg_uuid_n is not None else self.n)),
                       self.seqno, [("pv0", dashed(_uuid("PvIdPv", self.n)), PE_START // 512, self.pe_count)],
                       linear_lv(self.lv, dashed(_uuid("LvIdLv", self.lv_uuid_n if self.lv_uuid_n is not None
                                                       else self.n)),
                                 self.extents, start_pe=self.start_pe, tags=self.tags),
                       extent_size=EXTENT // 512)
        return bytes(build_pv(PE_START, _uuid("PvIdPv", self.n), [Mda(MDA.offset, MDA.size, text=text)], PE_START))

    @property
    def size(self) -> int:
        return PE_START + self.pe_count * EXTENT

    def lv_bytes(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(PE_START + self.start_pe * EXTENT)
            return f.read(self.extents * EXTENT)

    def rewrite_metadata(self, restore_mtime: bool = True, **changes: object) -> None:
        """Write new metadata over the old (seqno + 1 and ``changes``), size kept, mtime restored."""
        st = os.stat(self.path)
        for k, v in changes.items():
            setattr(self, k, v)
        self.seqno += 1
        with open(self.path, "r+b") as f:
            f.write(self.head())
        if restore_mtime:
            os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(self.path).st_size == st.st_size


def make(path: Path, vg: str, lv: str, n: int, *, extents: int = 2, pe_count: int | None = None,
         tags: str = "") -> Container:
    """A container whose every PE holds distinct random bytes."""
    c = Container(path, vg, lv, n, pe_count or extents, extents, tags=tags)
    with open(path, "wb") as f:
        f.write(c.head())
        f.truncate(c.size)
        f.seek(PE_START)
        for _ in range(c.pe_count):
            f.write(os.urandom(EXTENT))
    return c


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """euca2kvm in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "euca2kvm", *args], capture_output=True, text=True,
                          timeout=timeout)


def assert_clean_failure(p: subprocess.CompletedProcess[str], code: int) -> None:
    """Failed with ``code``, through the error path: no traceback, not killed by a signal."""
    assert p.returncode == code, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    assert "Traceback" not in p.stderr and "Fatal Python error" not in p.stderr, p.stderr[-3000:]
