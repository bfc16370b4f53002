# SPDX-License-Identifier: Apache-2.0
"""Export one volume: preflight, resume check, copy or convert, verify, atomic rename, manifest.

Everything is read through the source's :class:`~euca2kvm.blocks.BlockSource`, once. Raw images
are written by the block mover (sparse, hashed while read). Other formats are written by
``qemu-img convert``, fed without a temporary full-size copy through the NBD server on a private
unix socket; the server digests the blocks it serves (:mod:`.served`), and verification (on by
default) digests the output through ``qemu-nbd`` and compares: export, resume and ``verify``
check the same block digest (:mod:`.digest`).

Sources that change are refused: the files' size, mtime, ctime and inode are taken before the
copy and again after it (before the output is published), and an LVM source's metadata is read
again from its container (:mod:`.identity`). Any difference — a source written, truncated or
replaced, the VG metadata rewritten since the scan — is an :class:`IOFailure` (exit 5) naming the
file, "changed while exporting"; nothing is published and the partial output is removed. A copy
that fails because its source shrank (short read, qemu-img reading past the end) is reported the
same way. Exit 5 rather than 4 ("in use"): the change is seen in the bytes, not in a holder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import blocks, safefs
from ..blocks import BlockSource, Kind
from ..errors import Euca2kvmError, FormatError, IOFailure, VerifyError
from ..outdir import OutDir, WorkDir
from ..units import human
from . import manifest
from .copy import DEFAULT_WORKERS, CopyResult, copy_blocks
from .digest import DEFAULT, Algorithm, algorithm_of
from .formats import OutputFormat, check_size, output_bytes
from .raw import IMAGE, new_image

if TYPE_CHECKING:
    from .nbd import NbdServer
    from .served import Served
    from .warm import WarmPass

log = logging.getLogger(__name__)


Progress = Callable[[int], None]
NBD_SOCKET = "nbd.sock"  # the NBD server's socket, in the export's private work directory


@dataclass(frozen=True)
class ExportOptions:
    fmt: OutputFormat
    sha256: bool = False
    verify: bool = True
    workers: int = DEFAULT_WORKERS
    fsync: bool = False
    overwrite: bool = False
    algorithm: Algorithm = DEFAULT  # the block digest
    warm: bool = False  # --warm: the source may be written while read (see .warm); per-block digests kept


@dataclass
class Source:
    """What is exported: an id for names, the block source, descriptive fields for the manifest,
    what the source was built from (:mod:`.identity`; empty for files without LVM), and the local
    files whose size, times and inode must not change while exporting (empty for sources that are
    not local files, e.g. RBD)."""

    id: str
    blocks: BlockSource
    fields: dict[str, Any]  # kind, vg, lv, segment_types...
    identity: dict[str, Any] = field(default_factory=dict)  # VG/LV uuids, metadata seqno and checksum
    recheck: Callable[[], dict[str, Any]] | None = None  # re-reads ``identity`` from the container
    files: list[str] = field(default_factory=list)  # fingerprinted files (local or ssh://), sorted

    def __post_init__(self) -> None:
        # A backend's source that knows what it was built from (RBD: ids, parent, object versions)
        # gives its identity and re-check itself.
        own = getattr(self.blocks, "identity", None)
        if not self.identity and self.recheck is None and callable(own):
            self.identity, self.recheck = own(), self.blocks.recheck  # type: ignore[attr-defined]


def fingerprint(paths: list[str]) -> list[dict[str, Any]]:
    """Size, mtime, ctime and inode of each source file: what a copy must find unchanged after it,
    and a re-run before it reuses an output (a restored mtime still moves the ctime). A file behind
    a registered opener (``ssh://``) is stamped by that opener's ``stamp(names)``, on its host."""
    stamped: dict[str, dict[str, Any]] = {}
    for opener, names in _by_opener(paths).items():
        stamp = getattr(opener, "stamp", None)
        if stamp is None:
            raise IOFailure(f"cannot take the size and times of {names[0]}")
        stamped.update(zip(names, stamp(names), strict=True))
    out = []
    for p in paths:
        if p in stamped:
            out.append(stamped[p])
            continue
        try:
            st = os.stat(p)
        except OSError as e:
            raise IOFailure(f"cannot stat {p}: {e.strerror} (changed while exporting?)") from e
        entry: dict[str, Any] = {"path": p, **safefs.stamp(st)}
        if stat.S_ISBLK(st.st_mode):
            entry.update(_device_identity(p, st))
        out.append(entry)
    return out


# sysfs attributes that name what is behind a block device node: a SAN LUN's world-wide id (the
# partition's parent has it), a loop device's backing file. Short text files; more is not an identity.
_DEVICE_ATTRS = ("device/wwid", "wwid", "../device/wwid", "loop/backing_file")
_DEVICE_ATTR_MAX = 512


def _device_identity(path: str, st: os.stat_result) -> dict[str, Any]:
    """What tells one block device from another attached later at the same node: its size, its device
    number and the LUN's wwid (or a loop device's backing file) — a node's times alone do not."""
    out: dict[str, Any] = {"rdev": f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            out["size"] = os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    except OSError as e:
        raise IOFailure(f"cannot read the size of {path}: {e.strerror}") from e
    base = f"/sys/dev/block/{out['rdev']}"
    for attr in _DEVICE_ATTRS:
        key = attr.rsplit("/", 1)[-1]
        if key in out:
            continue
        try:
            with open(os.path.join(base, attr), "rb") as f:
                out[key] = f.read(_DEVICE_ATTR_MAX).decode("utf-8", "replace").strip()
        except OSError:
            continue
    return out


def _by_opener(paths: list[str]) -> dict[blocks.FileOpener, list[str]]:
    out: dict[blocks.FileOpener, list[str]] = {}
    for p in paths:
        opener = blocks.opener_for(p)
        if opener is not None:
            out.setdefault(opener, []).append(p)
    return out


def identity(src: Source) -> dict[str, Any]:
    """What a manifest entry must record for its output to be reused: the source's identity and size."""
    return {**src.identity, "lv_size": src.blocks.size}


# What a warm pass (a guest writing the volume) may change in a source file: its times, not its size or inode.
CONTENT_STAMPS = frozenset({"mtime_ns", "ctime_ns"})


def _changes(src: Source, before: list[dict[str, Any]], warm: bool = False) -> str | None:
    """What changed in ``src`` since ``before`` was taken (and its metadata since the scan), or None;
    ``warm``: writes into the files are expected, only their size, inode and LVM metadata count."""
    try:
        after = fingerprint([f["path"] for f in before])
        for b, a in zip(before, after, strict=True):
            diff = [f"{k} {b[k]} -> {a[k]}" for k in b if b[k] != a[k] and not (warm and k in CONTENT_STAMPS)]
            if diff:
                return f"{b['path']} changed while exporting ({', '.join(diff)})"
        now = src.recheck() if src.recheck is not None else src.identity
        diff = [f"{k} {v} -> {now.get(k)}" for k, v in src.identity.items() if now.get(k) != v]
        if diff:
            what = "the VG metadata" if src.files else "the metadata"
            return f"{what} of {', '.join(src.files) or src.blocks.name} changed ({', '.join(diff)})"
    except IOFailure as e:
        return str(e)
    return None


def check_unchanged(src: Source, before: list[dict[str, Any]], cause: BaseException | None = None,
                    warm: bool = False) -> None:
    """IOFailure naming the file when ``src`` changed since ``before``; nothing is published then.

    With ``cause`` (the copy failed) a change is reported as the reason, the failure as its cause;
    without a change the caller re-raises the failure itself.
    """
    what = _changes(src, before, warm)
    if what is not None:
        raise IOFailure(f"{src.id}: {what}; refusing to publish an image of a source that changed while "
                        "exporting") from cause


def preflight(source: BlockSource, opts: ExportOptions, outdir: Path) -> int:
    """Estimated output bytes; IOFailure with numbers when the destination cannot hold them."""
    need = output_bytes(opts.fmt, blocks.data_bytes(source))
    st = os.statvfs(outdir)
    free = st.f_bavail * st.f_frsize
    if need > free:
        raise IOFailure(f"not enough space in {outdir}: the export needs about {human(need)} ({need} bytes), "
                        f"{human(free)} ({free} bytes) are free")
    return need


def reusable(entry: dict[str, Any] | None, out: Path, src: Source, opts: ExportOptions,
             state: list[dict[str, Any]] | None = None) -> bool:
    """True when ``out`` is a finished export of exactly this source that still verifies; ``state``:
    the source's :func:`fingerprint` if the caller took it already."""
    if entry is None or not out.exists() or not entry.get("digest") or entry.get("consistent") is False:
        return False  # an image of a warm pass is never a finished export
    # Entries written before identities were recorded have none: exported again.
    if (entry.get("format") != opts.fmt.name or entry.get("size") != src.blocks.size
            or entry.get("identity") != identity(src)
            or entry.get("source") != (fingerprint(src.files) if state is None else state)):
        return False
    try:
        found = content_digest(out, opts.fmt.name, entry["digest"], opts.workers, src.blocks.size)
    except Exception as e:  # noqa: BLE001 - any failure just means: export again
        log.info("existing %s does not verify (%s); exporting again", out, e)
        return False
    return found == entry["digest"]


def content_digest(path: Path, fmt: str, recorded: str, workers: int = DEFAULT_WORKERS, size: int | None = None) -> str:
    """The block digest of an image's guest-visible content (any format; fixed VHD needs fmt="vpc"),
    with the algorithm of the ``recorded`` digest it is to be compared with; ``size``: of the disk it
    was made from (a converted image may be up to a sector longer, see :func:`.imagedigest.image_digest`)."""
    from .imagedigest import image_digest

    return image_digest(str(path), fmt, workers=workers, algorithm=algorithm_of(recorded),
                        size=None if fmt == "raw" else size).digest


@contextlib.contextmanager
def _qemu_source(source: BlockSource, work: WorkDir, served: Served) -> Iterator[NbdServer]:
    """What qemu-img reads: our NBD server over the block source (its socket in the private work
    directory, unless that path is too long for a unix socket)."""
    from .nbd import MAX_SOCK_PATH, serve  # here and below: raw exports never load the conversion code

    with serve(source, work.socket_path(NBD_SOCKET, MAX_SOCK_PATH), served=served) as srv:
        yield srv


def _convert(src: Source, work: WorkDir, opts: ExportOptions, progress: Progress | None,
             on_read: Progress | None = None) -> CopyResult | None:
    """qemu-img convert into ``work/IMAGE``, reading the source through our NBD server.

    With verification (or ``--sha256``) the server digests the blocks it serves (:mod:`.served`), so
    the source is read once; the output is then digested through qemu-nbd and must match. ``on_read``
    counts what the server reads from the source (qemu-img reports no byte counts)."""
    from . import qemu_img
    from .imagedigest import image_digest
    from .served import Served

    source = src.blocks
    tmp = work.file(IMAGE)
    check = opts.verify or opts.sha256
    served = Served(source, opts.algorithm if check else None, on_read)
    done = [0]

    def on_percent(pct: float) -> None:
        if progress is not None:
            now = int(source.size * pct / 100)
            if now > done[0]:
                progress(now - done[0])
                done[0] = now

    with _qemu_source(source, work, served) as srv:
        try:
            qemu_img.convert(srv.uri, str(tmp), opts.fmt.name, opts.fmt.options, compress=opts.fmt.compress,
                             progress_cb=on_percent)
        except Euca2kvmError as e:
            if srv.read_failures:  # why the server answered EIO: the source's own error says more
                raise srv.read_failures[0] from e
            raise
        digest = served.hexdigest() if check else None
    if progress is not None and done[0] < source.size:
        progress(source.size - done[0])
    if not check:
        return None
    _after_convert(tmp)
    out = image_digest(str(tmp), opts.fmt.name, sha256=opts.sha256, workers=opts.workers, algorithm=opts.algorithm,
                       size=source.size)
    if out.digest != digest or out.size != source.size:
        raise VerifyError(f"{src.id}: {tmp} differs from the source after conversion (digest {out.digest}, "
                          f"the source's {digest})")
    return CopyResult(digest, out.sha256, source.size, served.bytes_read, 0)


def _after_convert(path: Path) -> None:
    """Called with the converted image before it is verified; tests replace it to damage the image."""


def export_source(src: Source, outdir: Path, opts: ExportOptions, progress: Progress | None = None,
                  on_read: Progress | None = None) -> tuple[dict[str, Any], bool]:
    """Export ``src`` into ``outdir``; returns (manifest entry, reused_existing_output).

    ``progress`` gets bytes of the disk covered, ``on_read`` bytes actually read from the source.
    ``src.blocks`` is closed when this returns."""
    try:
        return _export(src, outdir, opts, progress, on_read)
    finally:
        src.blocks.close()


def _export(src: Source, outdir: Path, opts: ExportOptions, progress: Progress | None,
            on_read: Progress | None) -> tuple[dict[str, Any], bool]:
    source = src.blocks
    if Kind.ERROR in source.kinds():
        raise FormatError(f"{src.id}: the source has an 'error' segment: reading it fails under device-mapper "
                          "too; refusing to export invented bytes")
    check_size(opts.fmt, source.size, src.id)
    out = manifest.output_path(outdir, src.id, opts.fmt.ext)
    previous = next((v for v in manifest.load(outdir)["volumes"] if v.get("output") == str(out.resolve())), None)
    # Taken once: what the resume check compares with the manifest, and what the copy must find unchanged
    # after it (a source changed while an existing output is digested is caught after the copy).
    source_state = fingerprint(src.files)
    if not opts.overwrite and reusable(previous, out, src, opts, source_state):
        assert previous is not None
        if progress is not None:
            progress(source.size)
        return previous, True
    estimate = preflight(source, opts, outdir)
    started = time.monotonic()
    warm = warm_pass(opts) if opts.warm else None
    # Everything is written in a private directory of this run (two runs never share a temporary)
    # and published with its manifest entry under the directory lock (see OutDir.publish). Another
    # live run writing this same output makes this one exit 4, naming it, before anything is written;
    # so does a directory or other non-regular file at the output name, with exit 5, left untouched.
    with OutDir(outdir) as od, od.work(out.name) as work:
        od.check_replaceable(out.name)  # again when publishing: this only saves a doomed copy
        try:
            if opts.fmt.name == "raw":
                with new_image(work, source.size, fsync=opts.fsync) as fd:
                    res: CopyResult | None = copy_blocks(source, fd, sha256=opts.sha256, workers=opts.workers,
                                                         progress=progress, name=src.id, digest=opts.verify,
                                                         algorithm=opts.algorithm, on_read=on_read,
                                                         on_block=warm.add if warm else None)
            else:
                res = _convert(src, work, opts, progress, on_read)
                if warm is not None:
                    warm.digest_output(work.file(IMAGE), opts, source.size)
        except Euca2kvmError as e:
            check_unchanged(src, source_state, e, warm=opts.warm)
            raise
        check_unchanged(src, source_state, warm=opts.warm)
        if opts.fsync and opts.fmt.name != "raw":
            work.fsync(IMAGE)
        entry = manifest_entry(src, outdir.resolve() / out.name, opts, res, source_state, estimate,
                               time.monotonic() - started, work.stat(IMAGE).st_blocks * 512)
        commit = ((lambda: manifest.record(outdir, entry, fsync=opts.fsync)) if warm is None
                  else warm.commit(od, out.name, entry))
        od.publish(work, IMAGE, out.name, commit=commit, fsync=opts.fsync)
    return entry, False


def warm_pass(opts: ExportOptions) -> WarmPass:
    from .warm import WarmPass

    return WarmPass(opts.algorithm)


def manifest_entry(src: Source, out: Path, opts: ExportOptions, res: CopyResult | None,
                   source_state: list[dict[str, Any]], estimate: int, elapsed: float, allocated: int) -> dict[str, Any]:
    """The manifest entry of a finished export of ``src`` to ``out`` (OUTDIR resolved, final name as is):
    built here only, for every kind of source."""
    entry: dict[str, Any] = {
        "id": src.id, **src.fields, "size": src.blocks.size,
        "digest": res.digest if res else None, "output": str(out), "format": opts.fmt.name,
        "format_options": opts.fmt.options, "compressed": opts.fmt.compress,
        "files": src.files, "source": source_state, "identity": identity(src),
        "verified": opts.verify, "estimated_bytes": estimate,
        "allocated_bytes": allocated,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(elapsed, 3),
    }
    if res is not None:
        entry["bytes_read"] = res.bytes_read
        if opts.fmt.name == "raw":
            entry["bytes_written"] = res.bytes_written
    if res is not None and res.sha256:
        entry["sha256"] = res.sha256
    return entry
