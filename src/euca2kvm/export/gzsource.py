# SPDX-License-Identifier: Apache-2.0
"""Gzip'd snapshot objects as an export source.

Eucalyptus uploads a snapshot to object storage gzip-compressed; a large one goes up as a
multipart upload whose every part is a fresh gzip member, so the object is a *concatenation of
gzip members*. Such a file (``snap-XXXX.gz``, or any file that starts with the gzip magic and is
named explicitly) is streamed through zlib with a bounded output window: memory stays at a few
MiB whatever the disk size.

* ``raw``: decompressed straight into the output, sparsely (runs of zeros stay holes), under a
  hidden temporary name renamed when complete; the block digest (and optional sha256) is then
  computed from what was written, by the same fold every export uses.
* other formats: decompressed the same way into a temporary raw file in a private work
  directory inside the output directory (see :mod:`.outdir`), which then goes through the
  ordinary pipeline (``qemu-img convert``, digest and verification) and is deleted.
  That needs room for the raw image as well as the output.

The uncompressed size is only known at the end (gzip records it modulo 4 GiB per member), so no
space preflight is possible; running out of space is reported as an I/O error.
"""

from __future__ import annotations

import contextlib
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import FormatError, IOFailure, VerifyError
from ..ids import GZIP_MAGIC, SNAP_GZ_RE, is_gzip
from ..lvm.source import fd_source, file_source
from ..outdir import OutDir
from ..units import MiB, TiB
from . import manifest
from .copy import CopyResult, copy_blocks, write_sparse
from .digest import DEFAULT, Algorithm
from .pipeline import ExportOptions, Source, content_digest, export_source, fingerprint, manifest_entry
from .raw import IMAGE, atomic_output, new_image

# Compressed bytes read per call: large enough for zlib throughput, small enough to be noise.
READ_CHUNK = 1 * MiB
# Largest decompressed output zlib may hand back per call: bounds memory against gzip bombs.
OUT_WINDOW = 4 * MiB
# EBS volumes top out at 16 TiB; a stream inflating beyond that is not a snapshot.
MAX_OUTPUT = 16 * TiB

Progress = Callable[[int], None]


@dataclass
class GzResult:
    size: int
    digest: str
    sha256: str | None
    members: int
    bytes_read: int  # compressed bytes consumed
    bytes_written: int  # data bytes written (holes skipped)


def gz_id(path: str) -> str:
    """The id an object is exported under: ``snap-XXXX`` for ``snap-XXXX.gz``, else the name minus .gz
    (as it is: :func:`.manifest.output_path` escapes it once into the output name)."""
    base = os.path.basename(path)
    if SNAP_GZ_RE.match(base):
        return base[: -len(".gz")]
    return (base[:-3] if base.endswith(".gz") else base) or "snapshot"


def split_sources(paths: list[str]) -> tuple[list[str], list[str]]:
    """(gzip objects, other sources): explicit files starting with the gzip magic, and ``snap-*.gz`` in
    directories. Directories stay in the other list too (their LVM containers are scanned as usual)."""
    gz: list[str] = []
    rest: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            rest.append(p)
            with contextlib.suppress(OSError):
                gz += [
                    os.path.realpath(os.path.join(p, n)) for n in sorted(os.listdir(p)) if SNAP_GZ_RE.match(n)
                ]
        elif os.path.isfile(p) and is_gzip(p):
            gz.append(os.path.realpath(p))
        else:
            rest.append(p)
    return list(dict.fromkeys(gz)), rest


class _Sink:
    """Writes decompressed bytes in order into the output, sparsely (zero grains stay holes)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0
        self.written = 0

    def feed(self, data: bytes) -> None:
        if data:
            self.written += write_sparse(self.fd, memoryview(data), self.pos)
            self.pos += len(data)


def decompress(
    path: str,
    out_fd: int,
    *,
    sha256: bool = False,
    progress: Progress | None = None,
    max_size: int = MAX_OUTPUT,
    algorithm: Algorithm = DEFAULT,
) -> GzResult:
    """Stream every gzip member of ``path`` into the empty file ``out_fd`` (sparse), size it, and digest
    what was written with the one block-digest fold (:func:`.copy.copy_blocks`)."""
    sink = _Sink(out_fd)
    members = 0
    consumed = 0
    dec: Any = None
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; the loop is long
    except OSError as e:
        raise IOFailure(f"cannot open {path}: {e.strerror}") from e
    with f:
        pending = b""
        while True:
            if not pending:
                try:
                    pending = f.read(READ_CHUNK)
                except OSError as e:
                    raise IOFailure(f"read of {path} failed: {e.strerror}") from e
                consumed += len(pending)
                if not pending:
                    break
            if dec is None:
                if pending.strip(b"\0") == b"" and members:
                    pending = b""  # zero padding after the last member (gzip ignores it too)
                    continue
                if len(pending) < 2 and members:
                    more = f.read(1)
                    consumed += len(more)
                    pending += more
                if pending[:2] != GZIP_MAGIC:
                    where = f"after gzip member {members}" if members else "at the start"
                    raise FormatError(
                        f"not a gzip member {where} (no 1f 8b magic)", path, consumed - len(pending)
                    )
                dec = zlib.decompressobj(wbits=31)
                members += 1
            try:
                out = dec.decompress(pending, OUT_WINDOW)
                while True:
                    sink.feed(out)
                    if progress is not None and out:
                        progress(len(out))
                    if sink.pos > max_size:
                        raise FormatError(f"decompresses beyond {max_size} bytes; not a snapshot", path)
                    if dec.eof or not dec.unconsumed_tail:
                        break  # at the end of a member the tail is the next member (also in unused_data)
                    out = dec.decompress(dec.unconsumed_tail, OUT_WINDOW)
            except zlib.error as e:
                raise FormatError(f"gzip member {members} is corrupt: {e}", path) from e
            pending = b""
            if dec.eof:
                pending = dec.unused_data
                dec = None
    if dec is not None:
        raise FormatError(f"gzip member {members} is truncated (the object is incomplete)", path)
    if members == 0:
        raise FormatError("empty file, not a gzip object", path)
    size = sink.pos
    try:
        os.ftruncate(out_fd, size)
    except OSError as e:
        raise IOFailure(f"cannot size the output of {path} to {size} bytes: {e.strerror}") from e
    with fd_source(out_fd, size, path) as written:
        res = copy_blocks(written, None, sha256=sha256, algorithm=algorithm)
    assert res.digest is not None
    return GzResult(size, res.digest, res.sha256, members, consumed, sink.written)


def _reusable(outdir: Path, out: Path, path: str, opts: ExportOptions) -> dict[str, Any] | None:
    prev = next((v for v in manifest.load(outdir)["volumes"] if v.get("output") == str(out.resolve())), None)
    if (
        opts.overwrite
        or prev is None
        or not out.exists()
        or not prev.get("digest")
        or prev.get("format") != opts.fmt.name
        or prev.get("source") != fingerprint([path])
    ):
        return None
    try:
        found = content_digest(out, opts.fmt.name, prev["digest"], opts.workers, prev.get("size"))
        return prev if found == prev["digest"] else None
    except Exception:  # noqa: BLE001 - anything wrong with the old output means: export again
        return None


def export_gz(
    path: str,
    outdir: Path,
    opts: ExportOptions,
    progress: Progress | None = None,
    name: str | None = None,
    fields: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Export a gzip'd snapshot object; returns (manifest entry, reused_existing_output)."""
    ident = name or gz_id(path)
    out = manifest.output_path(outdir, ident, opts.fmt.ext)
    prev = _reusable(outdir, out, path, opts)
    if prev is not None:
        return prev, True
    started = time.monotonic()
    state = fingerprint([path])
    base: dict[str, Any] = {"id": ident, "kind": "snapshot-gz", **(fields or {})}
    if opts.fmt.name == "raw":
        entry: dict[str, Any] = {}  # filled in before the image is published, recorded with it
        with atomic_output(out, 0, fsync=opts.fsync, commit=lambda: manifest.record(outdir, entry)) as fd:
            res = decompress(path, fd, sha256=opts.sha256, progress=progress, algorithm=opts.algorithm)
            written = Source(ident, fd_source(fd, res.size, path), base, files=[path])
            copied = CopyResult(res.digest, res.sha256, res.size, res.bytes_read, res.bytes_written)
            entry.update(manifest_entry(written, outdir.resolve() / out.name, replace(opts, verify=True), copied, state,
                                        res.size, 0.0, os.fstat(fd).st_blocks * 512))
            _finish(entry, res, path, state, started)
        return entry, False
    # The decompressed temporary lives in a private work directory of this run, never in OUTDIR itself.
    with OutDir(outdir) as od, od.work(f"{out.name}.raw") as work:
        with new_image(work, 0) as fd:
            res = decompress(path, fd, sha256=opts.sha256, progress=progress, algorithm=opts.algorithm)
        tmp = str(work.file(IMAGE))
        entry, _ = export_source(Source(ident, file_source(tmp, res.size), base, files=[tmp]), outdir, opts)
    if entry.get("digest") and entry["digest"] != res.digest:
        raise VerifyError(f"{ident}: the digest of the decompressed data changed during conversion")
    entry["digest"] = res.digest
    entry["bytes_read"] = res.bytes_read
    _finish(entry, res, path, state, started)
    manifest.record(outdir, entry)
    return entry, False


def _finish(entry: dict[str, Any], res: GzResult, path: str, state: list[dict[str, Any]], started: float) -> None:
    """The fields every gzip'd snapshot's entry has, whatever the output format."""
    entry.update(
        files=[path],
        source=state,
        gzip_members=res.members,
        compressed_size=state[0]["size"],
        seconds=round(time.monotonic() - started, 3),
    )
    if res.sha256:
        entry["sha256"] = res.sha256
