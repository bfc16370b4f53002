# SPDX-License-Identifier: Apache-2.0
"""List directories and read small regular files of an XFS filesystem, read-only, through a reader.

``xfs_db`` cannot print a file's content and opens only whole files or devices, so euca2kvm reads
the few structures needed itself (layouts from the kernel's ``fs/xfs/libxfs/xfs_format.h``,
``xfs_da_format.h`` and ``xfs_bmap_btree.h``; checked in the tests against files written by
``mkfs.xfs -p``):

* the superblock (block size, AG geometry, inode size, the v5/CRC and ftype features);
* inodes located from their numbers (AG, block, slot), v2 and v3 cores, the data fork in local
  (shortform directory), extents or btree format (the block map btree, root in the inode, when the
  extents do not fit in it: a /usr/bin of a few thousand entries);
* directories: shortform, and the data blocks (``XD2B``/``XDB3`` single-block, ``XD2D``/``XDD3``
  multi-block) below the 32 GiB leaf offset;
* regular files by their extents, unwritten extents and holes reading as zeros.

Symlinks are reported as such and never followed, including in the middle of a path. Every count
and offset read from the filesystem is bounded before use.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ..errors import FormatError
from .imagefile import Window, clean_text

XFS_MAGIC = b"XFSB"
INODE_MAGIC = b"IN"
SB_FEAT_INCOMPAT_FTYPE = 0x1
SB_FEAT_INCOMPAT_NREXT64 = 0x20
SB_VERSION2_FTYPE = 0x200
DIFLAG2_NREXT64 = 1 << 4
FMT_LOCAL, FMT_EXTENTS, FMT_BTREE = 1, 2, 3
# Block map btree blocks (xfs_btree_block, long form): v4 "BMAP" 24-byte header, v5 "BMA3" 72 bytes.
BMAP_MAGICS = {b"BMAP": 24, b"BMA3": 72}
# A block map btree over 2^64 blocks is at most 9 levels deep; more is a loop in hostile data.
MAX_BTREE_LEVELS = 9
# Extents collected from one fork: a directory of a million entries has a few thousand.
MAX_EXTENTS = 65_536
V2_CORE, V3_CORE = 100, 176
# Directory data blocks live below this byte offset of a directory (XFS_DIR2_LEAF_OFFSET).
DIR_LEAF_OFFSET = 32 << 30
DATA_MAGICS = {b"XD2B": (16, True), b"XDB3": (64, True), b"XD2D": (16, False), b"XDD3": (64, False)}
FTYPE_KIND = {1: "file", 2: "dir", 7: "symlink"}
# Directory blocks read per directory (a /usr/bin of 3000 entries takes a few dozen 4 KiB blocks).
MAX_DIR_BLOCKS = 4096
# Path components resolved per lookup.
MAX_DEPTH = 16
# One read through the window; larger extents are read in pieces of this size.
READ_PIECE = 1 << 20

Entries = dict[str, tuple[str, int]]


def _mode_kind(mode: int) -> str:
    return {0o040000: "dir", 0o100000: "file", 0o120000: "symlink"}.get(mode & 0o170000, "other")


class XfsView:
    """The XFS filesystem in ``window``; see the module docstring. Raises FormatError on bad structures."""

    def __init__(self, window: Window, name: str) -> None:
        self.w, self.name = window, name
        sb = self._read(0, 512, "superblock")
        if sb[:4] != XFS_MAGIC:
            raise FormatError(f"{name}: no XFS superblock")
        self.bsize, = struct.unpack_from(">I", sb, 4)
        self.rootino, = struct.unpack_from(">Q", sb, 56)
        self.agblocks, self.agcount = struct.unpack_from(">II", sb, 84)
        version, self.isize, self.inopb = struct.unpack_from(">HxxHH", sb, 100)
        self.blocklog, self.inopblog, self.agblklog = sb[120], sb[123], sb[124]
        self.dirblklog = sb[192]
        features2, = struct.unpack_from(">I", sb, 200)
        incompat, = struct.unpack_from(">I", sb, 216)
        self.v5 = version & 0xF == 5
        self.ftype = bool(incompat & SB_FEAT_INCOMPAT_FTYPE) if self.v5 else bool(features2 & SB_VERSION2_FTYPE)
        self.nrext64 = self.v5 and bool(incompat & SB_FEAT_INCOMPAT_NREXT64)
        if (self.bsize != 1 << self.blocklog or not 512 <= self.bsize <= 65536 or self.isize < 256
                or self.isize > 2048 or self.inopb != 1 << self.inopblog or self.inopb * self.isize != self.bsize
                or not 0 < self.agblocks <= 1 << self.agblklog or self.agblklog > 31 or self.dirblklog > 8):
            raise FormatError(f"{name}: XFS superblock geometry is inconsistent")
        self.dirblksize = self.bsize << self.dirblklog
        if self.dirblksize > READ_PIECE:
            raise FormatError(f"{name}: XFS directory block of {self.dirblksize} bytes")

    def _read(self, offset: int, length: int, what: str) -> bytes:
        data = self.w.read(offset, length)
        if data is None:
            raise FormatError(f"{self.name}: XFS {what} at byte {offset} lies outside the filesystem")
        return data

    def _fsb_byte(self, fsb: int) -> int:
        agno, agbno = fsb >> self.agblklog, fsb & ((1 << self.agblklog) - 1)
        if agno >= self.agcount or agbno >= self.agblocks:
            raise FormatError(f"{self.name}: XFS block {fsb} is outside the filesystem")
        return (agno * self.agblocks + agbno) * self.bsize

    def _inode(self, ino: int) -> tuple[int, int, int, bytes]:
        """(mode, size, format, data fork bytes) of inode ``ino``."""
        shift = self.agblklog + self.inopblog
        agno, agino = ino >> shift, ino & ((1 << shift) - 1)
        agbno, slot = agino >> self.inopblog, agino & (self.inopb - 1)
        if agno >= self.agcount or agbno >= self.agblocks:
            raise FormatError(f"{self.name}: XFS inode {ino} is outside the filesystem")
        raw = self._read((agno * self.agblocks + agbno) * self.bsize + slot * self.isize, self.isize, "inode")
        if raw[:2] != INODE_MAGIC or raw[4] not in (1, 2, 3):
            raise FormatError(f"{self.name}: XFS inode {ino} has no valid core")
        mode, = struct.unpack_from(">H", raw, 2)
        size, = struct.unpack_from(">Q", raw, 56)
        core = V3_CORE if raw[4] == 3 else V2_CORE
        forkoff = raw[82]
        end = core + forkoff * 8 if forkoff else self.isize
        if end > self.isize or end < core:
            raise FormatError(f"{self.name}: XFS inode {ino} fork offset out of range")
        if raw[4] == 3 and self.nrext64 and struct.unpack_from(">Q", raw, 120)[0] & DIFLAG2_NREXT64:
            nextents = struct.unpack_from(">Q", raw, 24)[0]
        else:
            nextents = struct.unpack_from(">I", raw, 76)[0]
        fork = raw[core:end]
        fmt = raw[5]
        if fmt == FMT_EXTENTS:
            if nextents * 16 > len(fork):
                raise FormatError(f"{self.name}: XFS inode {ino} claims {nextents} extents in its fork")
            fork = fork[: nextents * 16]
        elif fmt == FMT_BTREE:
            fork, fmt = self._btree_extents(fork, ino), FMT_EXTENTS
        return mode, size, fmt, fork

    def _btree_extents(self, root: bytes, ino: int) -> bytes:
        """The packed extent list of a btree-format fork: the root (xfs_bmdr_block: level, numrecs,
        keys and pointers sized to the fork) walked down to the leaf blocks, left to right."""
        level, numrecs = struct.unpack_from(">HH", root, 0)
        maxrecs = (len(root) - 4) // 16
        if not 0 < level <= MAX_BTREE_LEVELS or numrecs > maxrecs:
            raise FormatError(f"{self.name}: XFS inode {ino} has an invalid block map btree root")
        ptrs = list(struct.unpack_from(f">{numrecs}Q", root, 4 + maxrecs * 8))
        leaves = bytearray()
        for depth in range(level, 0, -1):
            children: list[int] = []
            for fsb in ptrs:
                blk = self._read(self._fsb_byte(fsb), self.bsize, "block map btree block")
                hdr = BMAP_MAGICS.get(blk[:4])
                blevel, n = struct.unpack_from(">HH", blk, 4)
                if hdr is None or blevel != depth - 1:
                    raise FormatError(f"{self.name}: XFS inode {ino}: bad block map btree block {fsb}")
                if blevel == 0:
                    if n * 16 > self.bsize - hdr or len(leaves) + n * 16 > MAX_EXTENTS * 16:
                        raise FormatError(f"{self.name}: XFS inode {ino}: too many extents")
                    leaves += blk[hdr : hdr + n * 16]
                    continue
                bmax = (self.bsize - hdr) // 16
                if n > bmax or len(children) + n > MAX_EXTENTS:
                    raise FormatError(f"{self.name}: XFS inode {ino}: bad block map btree node {fsb}")
                children += struct.unpack_from(f">{n}Q", blk, hdr + bmax * 8)
            ptrs = children
        return bytes(leaves)

    @staticmethod
    def _extents(fork: bytes) -> list[tuple[int, int, int, bool]]:
        """(file block, fs block, count, unwritten) of a packed extent list."""
        out = []
        for i in range(0, len(fork) - 15, 16):
            l0, l1 = struct.unpack_from(">QQ", fork, i)
            out.append(((l0 & ((1 << 63) - 1)) >> 9, ((l0 & 0x1FF) << 43) | (l1 >> 21), l1 & ((1 << 21) - 1),
                        bool(l0 >> 63)))
        return out

    def _fork_bytes(self, fork: bytes, offset: int, length: int) -> bytes:
        """Bytes ``offset..offset+length`` of an extents-format fork (holes are zeros)."""
        out = bytearray(length)
        for fblk, fsb, count, unwritten in self._extents(fork):
            lo, hi = max(offset, fblk * self.bsize), min(offset + length, (fblk + count) * self.bsize)
            if lo >= hi or unwritten:
                continue
            for pos in range(lo, hi, READ_PIECE):
                n = min(READ_PIECE, hi - pos)
                start = self._fsb_byte(fsb) + (pos - fblk * self.bsize)
                out[pos - offset : pos - offset + n] = self._read(start, n, "data")
        return bytes(out)

    def _dir(self, ino: int) -> list[tuple[str, int, int | None]]:
        """(name, inode, ftype or None) of a directory's entries."""
        mode, size, fmt, fork = self._inode(ino)
        if _mode_kind(mode) != "dir":
            return []
        if fmt == FMT_LOCAL:
            return self._shortform(fork)
        if fmt != FMT_EXTENTS:
            raise FormatError(f"{self.name}: XFS directory inode {ino} in btree format is not read")
        out: list[tuple[str, int, int | None]] = []
        seen: set[int] = set()  # a directory block split over two extents is read once
        for fblk, _, count, _ in self._extents(fork):
            first, end = fblk * self.bsize, min((fblk + count) * self.bsize, DIR_LEAF_OFFSET)
            pos = first - first % self.dirblksize
            while pos < end:
                if pos not in seen:
                    seen.add(pos)
                    if len(seen) > MAX_DIR_BLOCKS:
                        raise FormatError(f"{self.name}: XFS directory inode {ino} has over {MAX_DIR_BLOCKS} "
                                          "blocks")
                    out += self._data_block(self._fork_bytes(fork, pos, self.dirblksize))
                pos += self.dirblksize
        return out

    def _shortform(self, fork: bytes) -> list[tuple[str, int, int | None]]:
        if len(fork) < 6:
            return []
        count, i8 = fork[0], fork[1]
        isz = 8 if i8 else 4
        pos, out = 2 + isz, []
        for _ in range(i8 or count):
            if pos >= len(fork):
                break
            n = fork[pos]
            name = fork[pos + 3 : pos + 3 + n]
            pos += 3 + n
            ftype = fork[pos] if self.ftype and pos < len(fork) else None
            pos += 1 if self.ftype else 0
            if pos + isz > len(fork) or n == 0:
                break
            ino = int.from_bytes(fork[pos : pos + isz], "big")
            pos += isz
            out.append((name.decode("utf-8", "replace"), ino, ftype))
        return out

    def _data_block(self, blk: bytes) -> list[tuple[str, int, int | None]]:
        hdr = DATA_MAGICS.get(blk[:4])
        if hdr is None:
            return []  # a freed or leaf block
        pos, end = hdr[0], len(blk)
        if hdr[1]:  # single-block directory: leaf entries and a tail at the end
            leaf_count, = struct.unpack_from(">I", blk, len(blk) - 8)
            end = max(pos, len(blk) - 8 - leaf_count * 8)
        out = []
        while pos + 8 <= end:
            if blk[pos : pos + 2] == b"\xff\xff":  # unused space: length follows the tag
                skip, = struct.unpack_from(">H", blk, pos + 2)
                if skip < 8 or skip % 8:
                    break
                pos += skip
                continue
            ino, n = struct.unpack_from(">QB", blk, pos)
            name = blk[pos + 9 : pos + 9 + n]
            ftype = blk[pos + 9 + n] if self.ftype and pos + 9 + n < end else None
            size = (9 + n + (1 if self.ftype else 0) + 2 + 7) & ~7
            if n == 0 or pos + size > end:
                break
            out.append((name.decode("utf-8", "replace"), ino, ftype))
            pos += size
        return out

    def _lookup(self, path: str) -> int | None:
        ino = self.rootino
        parts = [p for p in path.split("/") if p]
        if len(parts) > MAX_DEPTH:
            return None
        for part in parts:
            found = next((e for e in self._dir(ino) if e[0] == part), None)
            if found is None:
                return None
            ino = found[1]
        return ino

    def entries(self, path: str, want: Callable[[str], bool]) -> Entries | None:
        ino = self._lookup(path)
        if ino is None:
            return None
        mode, _, _, _ = self._inode(ino)
        if _mode_kind(mode) != "dir":
            return None  # a symlink to a directory is not followed
        out: Entries = {}
        for name, child, _ in self._dir(ino):
            if name in (".", "..") or not want(name):
                continue
            cmode, csize, _, _ = self._inode(child)
            out[name] = (_mode_kind(cmode), csize)
        return out

    def prefetch(self, paths: list[str]) -> None:
        pass  # every read is a pread of the image; nothing to batch

    def read_many(self, files: list[tuple[str, int]]) -> dict[str, bytes]:
        out = {}
        for path, size in files:
            try:
                out[path] = self.read(path, size)
            except FormatError:
                continue  # the caller notes it as not read
        return out

    def read(self, path: str, size: int) -> bytes:
        ino = self._lookup(path)
        if ino is None:
            raise FormatError(f"{self.name}: {clean_text(path)} vanished")
        mode, isize, fmt, fork = self._inode(ino)
        if _mode_kind(mode) != "file" or fmt != FMT_EXTENTS or isize != size:
            raise FormatError(f"{self.name}: {clean_text(path)} is not a regular file in extents format")
        return self._fork_bytes(fork, 0, size)
