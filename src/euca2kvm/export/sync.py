# SPDX-License-Identifier: Apache-2.0
"""Warm migration, later passes: rewrite only the blocks that changed since the last pass.

``export --warm`` on a volume that already has a warm image, and ``export --sync`` once its
instance is stopped (in-use checks back on), run :func:`delta_pass`:

1. the source is read once at local disk speed through the block mover, digests only
   (``copy_blocks(out_fd=None, on_block=)``), and each block's digest compared with the sidecar
   (:mod:`.sidecar`) of the image;
2. if any differ, the sidecar is first rewritten with those blocks marked unknown and the entry
   marked ``"sync_in_progress": true, "consistent": false`` — an interrupted pass leaves that
   state, is never reported consistent, and its re-run rewrites the marked blocks again;
3. the changed blocks are read again (a few, usually page-cached), digested and written in place
   into the published raw image (whole blocks, ``pwrite``), which is then flushed;
4. the source is checked as after any export (size, inode, LVM metadata; ``--sync`` also its times:
   nothing may write it any more), the whole image is verified, and the entry records the new
   sidecar, the digest, ``"consistent": true`` for ``--sync`` (false for another warm pass) and what
   the pass read and wrote. ``--sync`` of a raw image verifies in the source's one pass instead of
   hashing it: the image is read by its own thread beside the source, each block compared byte for
   byte (:class:`_AgainstImage`, a ``memcmp``), and only the blocks that differ (or whose digest the
   sidecar does not know) are hashed, to tell a changed source block from a damaged image block (its
   digest unchanged: exit 6); a block both hold keeps the sidecar's digest. The rewritten blocks are
   read back. Warm delta passes of a raw image are verified the same way; other formats digest the
   whole image again afterwards (a warm delta pass only when it rewrote blocks). ``--sync
   --no-verify`` reads only the source, hashed, and records ``"verified": false``: the rewritten
   blocks were digested as they were written (a raw image's read back), the others are trusted to be
   what the earlier passes wrote and verified, which holds only while the image is as the last pass
   left it. So every pass records the image's stamp (``"image"``: size, mtime, ctime, inode, taken
   once it is flushed and published), and ``--no-verify`` trusts the image only when its stamp is
   still that one: an image written since (booted, copied over, an interrupted pass) has a new ctime,
   which no program can set back, and is verified against the source as without ``--no-verify``
   (a warning says so). Not caught: a write within the same clock tick as the stamp (the kernel
   stamps times at its tick, a few ms), and a disk that returns other bytes than were written.

Raw images are written with ``pwrite``, other uncompressed formats (qcow2, vmdk...) through
``qemu-nbd`` in write mode (:mod:`.nbdwrite`), both in place: the published image is the work
copy, and the entry says it is not consistent until the pass has verified it. A compressed image
is refused (exit 3: its rewritten clusters would be stored uncompressed); ``s3://`` targets are not
handled (the CLI refuses them). A final pass that reads a block different from its digest pass
(the source still written) fails (exit 5) and stays ``sync_in_progress``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import membuf, safefs
from ..blocks import AllData, BlockSource
from ..errors import FormatError, IOFailure, UsageError, VerifyError
from ..outdir import OutDir
from . import manifest, sidecar
from .copy import block_data, copy_blocks, fill_block, pwrite_all
from .digest import DIGEST_BLOCK, Algorithm, block_count
from .pipeline import ExportOptions, Progress, Source, check_unchanged, content_digest, export_source, fingerprint
from .pipeline import identity as source_ident
from .warm import image_stamp, utc

log = logging.getLogger(__name__)


def previous_entry(outdir: Path, out: Path) -> dict[str, Any] | None:
    return next((v for v in manifest.load(outdir)["volumes"] if v.get("output") == str(out.resolve())), None)


def export_pass(src: Source, outdir: Path, opts: ExportOptions, final: bool, progress: Progress | None = None,
                on_read: Progress | None = None) -> tuple[dict[str, Any], bool]:
    """One pass of a warm migration (``final``: ``--sync``); the first warm pass is a full export."""
    out = manifest.output_path(outdir, src.id, opts.fmt.ext)
    prev = previous_entry(outdir, out)
    if prev is None or "blocks" not in prev or (opts.overwrite and not final):
        if final:
            src.blocks.close()
            raise UsageError(f"{src.id}: no warm export in {outdir} to sync (run export --warm first)")
        # a first warm pass, or --warm --overwrite: a full export that keeps its block digests (an
        # earlier export of the same bytes is not reused: it has none)
        return export_source(src, outdir, dataclasses.replace(opts, overwrite=True), progress, on_read)
    try:
        return delta_pass(src, outdir, out, prev, opts, final, progress, on_read), False
    finally:
        src.blocks.close()


def delta_pass(src: Source, outdir: Path, out: Path, entry: dict[str, Any], opts: ExportOptions, final: bool,
               progress: Progress | None, on_read: Progress | None) -> dict[str, Any]:
    source = src.blocks
    size = source.size
    fmt = opts.fmt.name
    if entry.get("format") != fmt or entry.get("compressed") or opts.fmt.compress:
        packed = " (compressed)" if entry.get("compressed") else ""
        raise FormatError(f"{src.id}: the image is {entry.get('format')}{packed}, not an uncompressed {fmt}; "
                          "export it again with --warm --overwrite", str(out))
    same_source(src, entry)
    car = sidecar.load(outdir, entry["blocks"], size)  # its own algorithm, whatever --block-digest says now
    algo = car.algorithm
    started = time.time()
    state = fingerprint(src.files)
    new: list[bytes] = [b""] * block_count(size)
    cur = list(car.digests)
    written = reread = 0
    with OutDir(outdir) as od, od.work(out.name):  # the claim: no other run writes this output meanwhile
        with _image_writer(od, out, size, fmt) as (write, image_fd, opened):
            verify = opts.verify or not trusted(entry, opened, out, src.id)
            # a raw image is compared with the source in the source's one pass (--sync and warm delta passes)
            one_pass = verify and fmt == "raw"
            against = _AgainstImage(source, image_fd, car.digests, algo) if one_pass and image_fd is not None else None
            try:  # against the image: compared, not hashed (the blocks that differ are hashed as read)
                res = copy_blocks(against or source, None, workers=opts.workers, name=src.id, algorithm=algo,
                                  digest=against is None, progress=progress, on_read=on_read,
                                  on_block=None if against is not None else new.__setitem__)
            finally:
                if against is not None:
                    against.close()
            if against is not None:
                new = [against.digest(i) for i in range(len(new))]
            changed = [i for i, d in enumerate(new) if d != car.digests[i]]
            damaged = sorted(against.differ.difference(changed)) if against is not None else []
            if damaged:  # the image differs where neither the source nor the sidecar says it changed
                manifest.record(outdir, {**entry, "consistent": False, "sync_in_progress": True})
                raise VerifyError(f"{src.id}: {out} differs from the source in block {damaged[0]} (bytes "
                                  f"{damaged[0] * DIGEST_BLOCK}..), which its block digests say it holds; "
                                  "export it again with --warm --overwrite")
            if changed:
                for i in changed:
                    cur[i] = sidecar.UNKNOWN
                marked = {**entry, "consistent": False, "sync_in_progress": True,
                          "blocks": sidecar.write(od, sidecar.name_for(out.name), sidecar.Sidecar(algo, size, cur))}
                manifest.record(outdir, marked)
                buf = membuf.aligned(DIGEST_BLOCK)
                for i in changed:
                    d, view, got = reread_block(src, i, buf, algo, new[i] if final else None)
                    cur[i] = d
                    written += write(i * DIGEST_BLOCK, view)
                    reread += got
                    if image_fd is not None and not holds(image_fd, i * DIGEST_BLOCK, view, str(out)):
                        manifest.record(outdir, {**entry, "consistent": False, "sync_in_progress": True})
                        raise VerifyError(f"{src.id}: block {i} of {out} does not read back as written; export "
                                          "it again with --overwrite")
        check_unchanged(src, state, warm=not final)
        car = sidecar.Sidecar(algo, size, cur)
        digest = car.folded()
        if final and against is None and digest != res.digest:
            raise AssertionError("a final pass whose blocks all match folds to the source's digest")
        checked = time.time()
        if verify and (changed or final) and against is None:
            found = content_digest(out, fmt, digest, opts.workers, size)
            if found != digest:  # never left recorded as consistent
                manifest.record(outdir, {**entry, "consistent": False, "sync_in_progress": True})
                raise VerifyError(f"{src.id}: {out} does not match its block digests after the delta pass "
                                  f"({found}, expected {digest}); export it again with --overwrite")
        ended = time.time()
        done = {k: v for k, v in entry.items() if k != "sync_in_progress"}
        warm_before = entry.get("warm") or {}
        warm = dict(warm_before)
        warm["passes"] = int(warm.get("passes", 1)) + 1
        if not final:
            warm.update(started_at=utc(started), ended_at=utc(ended), seconds=round(ended - started, 3))
        done.update(digest=digest, consistent=final, warm=warm, source=fingerprint(src.files),
                    delta={"at": utc(ended), "since": warm_before.get("ended_at"), "final": final,
                           "blocks": len(car.digests), "blocks_changed": len(changed),
                           "bytes_read": (against.read if against else res.bytes_read) + reread,
                           "bytes_written": written,
                           "seconds": round(ended - started, 3), "verify_seconds": round(ended - checked, 3)})
        if changed:
            done["blocks"] = sidecar.write(od, sidecar.name_for(out.name), car)
        done["image"] = image_stamp(od, out)  # flushed and closed: what the next --no-verify pass must find
        if final:
            done["synced_at"] = utc(ended)
            done["verified"] = verify  # --sync --no-verify: the rewritten blocks were digested as written
        # flushed with the batch's manifest (manifest.flush) unless --fsync; the image and sidecar are already
        manifest.record(outdir, done, fsync=opts.fsync)
    return done


def trusted(entry: dict[str, Any], found: os.stat_result, out: Path, name: str) -> bool:
    """Whether the image is as the last pass left it (its recorded stamp), so that ``--no-verify`` may
    trust the blocks it does not rewrite; if not, a warning that the image is verified instead."""
    recorded = entry.get("image")
    if recorded == safefs.stamp(found):
        return True
    why = ("its manifest entry has no stamp of it" if not isinstance(recorded, dict) else
           "it was written since the last pass (its size, times or inode changed)")
    log.warning("%s: %s: %s; verifying the whole image against the source (--no-verify trusts only an "
                "image that nothing wrote since the last pass)", name, out, why)
    return False


@contextlib.contextmanager
def _image_writer(od: OutDir, out: Path, size: int, fmt: str
                  ) -> Iterator[tuple[Callable[[int, memoryview], int], int | None, os.stat_result]]:
    """Writes of guest bytes into the published image: ``pwrite`` for raw, qemu-nbd for the rest;
    flushed to the image before this returns; the raw image's descriptor (to read it) and the image's
    status as opened. The image must be a regular file, never a link."""
    try:
        fd = os.open(out.name, (os.O_RDWR if fmt == "raw" else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=od.fd)
    except OSError as e:
        raise IOFailure(f"cannot open {out} for the delta pass: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (fmt == "raw" and st.st_size != size):
            raise FormatError(f"not a regular {size}-byte image (size {st.st_size}); export it again with "
                              "--overwrite", str(out))
        if fmt == "raw":
            yield (lambda at, view: pwrite_all(fd, view, at)), fd, st
            os.fdatasync(fd)
            return
        from .nbdwrite import writable

        with writable(str(out), fmt) as nbd:
            if nbd.size < size:
                raise FormatError(f"image holds {nbd.size} bytes, the disk {size}", str(out))
            yield nbd.write, None, st
    finally:
        os.close(fd)


def same_source(src: Source, entry: dict[str, Any]) -> None:
    """IOFailure unless the source has the size and LVM identity the warm pass recorded in ``entry``."""
    size = src.blocks.size
    if entry.get("size") != size or entry.get("identity") != source_ident(src):
        raise IOFailure(f"{src.id}: the source was resized or its LVM metadata changed since the warm pass "
                        f"(size {entry.get('size')} -> {size}); export it again with --warm --overwrite")


def reread_block(src: Source, i: int, buf: memoryview, algo: Algorithm,
                 expect: bytes | None) -> tuple[bytes, memoryview, int]:
    """:func:`read_block` of a block the pass found changed, to be written; with ``expect`` (a final
    pass: the instance is stopped) it must still have the digest the pass read, else IOFailure."""
    d, view, got = read_block(src, i, buf, algo)
    if expect is not None and d != expect:
        raise IOFailure(f"{src.id}: block {i} (bytes {i * DIGEST_BLOCK}..) changed during the sync; "
                        "is the instance still running? Stop it and run --sync again")
    return d, view, got


def read_block(src: Source, i: int, buf: memoryview, algo: Algorithm) -> tuple[bytes, memoryview, int]:
    """Block ``i`` of the source read whole into ``buf``: (its digest, its bytes, bytes read)."""
    source = src.blocks
    lo = i * DIGEST_BLOCK
    hi = min(source.size, lo + DIGEST_BLOCK)
    view = buf[: hi - lo]
    got = fill_block(source, lo, view, block_data(source, lo, hi, src.id))
    return algo.of(view), view, got


# Image blocks read ahead of the source's reader by the image's own reader thread (4 MiB buffers): enough
# that the two reads overlap (the image's goes on while the source's block is read and compared),
# 20 MiB of memory with the one being compared.
IMAGE_AHEAD = 4


class _ImageAhead:
    """A raw image read front to back by its own thread (``fd_source``: a new read-only descriptor,
    512 KiB calls, the kernel's sequential readahead, what was not cached dropped behind the reader),
    at most :data:`IMAGE_AHEAD` blocks ahead of :meth:`take`, which must ask for the blocks in order.
    The two files of a verified sync are then each read by one thread, in disk order, at once."""

    def __init__(self, image_fd: int, size: int, name: str) -> None:
        from ..lvm.source import fd_source

        self._src = fd_source(image_fd, size, name)
        self.size = size
        self._free: queue.Queue[memoryview | None] = queue.Queue()
        for _ in range(IMAGE_AHEAD + 1):
            self._free.put(membuf.aligned(DIGEST_BLOCK))
        self._full: queue.Queue[tuple[int, memoryview | None, BaseException | None]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="image-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for lo in range(0, self.size, DIGEST_BLOCK):
                buf = self._free.get()
                if buf is None:  # closed
                    return
                self._src.read_into(lo, memoryview(buf)[: min(DIGEST_BLOCK, self.size - lo)])
                self._full.put((lo, buf, None))
        except BaseException as e:  # handed to the reader, which raises it
            self._full.put((-1, None, e))

    def take(self, lo: int) -> memoryview:
        """The image's block at ``lo`` (give it back with :meth:`give_back`); what its read raised."""
        at, buf, err = self._full.get()
        if err is not None:
            self._full.put((at, buf, err))  # every later take raises it too
            raise err
        assert buf is not None and at == lo, (at, lo)
        return buf

    def give_back(self, buf: memoryview) -> None:
        self._free.put(buf)

    def close(self) -> None:
        self._free.put(None)
        self._thread.join(timeout=CLOSE_WAIT_S)
        if not self._thread.is_alive():
            self._src.close()  # a read hung on the disk keeps its descriptor until it returns


# How long closing waits for the image's reader to finish its current block (a hung disk must not hang
# the pass; the thread is a daemon).
CLOSE_WAIT_S = 10.0


class _AgainstImage(AllData):
    """The source as the mover reads it (all DATA: ZERO and HOLE ranges read as zeros), each block
    compared byte for byte with the raw image's (read ahead by :class:`_ImageAhead`): the whole image
    is verified in the source's one pass, against the source itself.

    The comparison also decides what changed, so the blocks the image already holds are not hashed:
    their digest is the sidecar's (the digest of what an earlier pass wrote there, the sidecar
    checked against its sha256). Only a block that differs, or whose digest the sidecar does not
    know (:data:`.sidecar.UNKNOWN`), is hashed: ``digests`` gets it, ``differ`` collects the blocks
    that differ. So the pass costs two reads and a ``memcmp`` per block, no hash. ``read`` counts the
    bytes read from the source (its holes not included). One reader, in disk order (``sequential``)."""

    sequential = True

    def __init__(self, source: BlockSource, image_fd: int, known: list[bytes], algo: Algorithm) -> None:
        self._src, self._fd, self._known, self._algo = source, image_fd, known, algo
        self._ahead = _ImageAhead(image_fd, source.size, source.name)
        self.differ: set[int] = set()
        self.digests: dict[int, bytes] = {}
        self.read = 0

    @property
    def name(self) -> str:
        return self._src.name

    @property
    def size(self) -> int:
        return self._src.size

    def read_into(self, offset: int, view: memoryview) -> None:
        # called once per block, in order (AllData: one DATA range per block; ``sequential``)
        self.read += fill_block(self._src, offset, view, block_data(self._src, offset, offset + len(view),
                                                                     self._src.name))
        img = self._ahead.take(offset)
        try:
            same = membuf.same(img[: len(view)], view)
        finally:
            self._ahead.give_back(img)
        i = offset // DIGEST_BLOCK
        if not same:
            self.differ.add(i)
        if not same or self._known[i] == sidecar.UNKNOWN:
            self.digests[i] = self._algo.of(view)

    def digest(self, i: int) -> bytes:
        """Block ``i``'s digest after the pass: hashed if it differed or was unknown, else the sidecar's."""
        return self.digests.get(i, self._known[i])

    def abort(self) -> None:
        stop = getattr(self._src, "abort", None)
        if stop is not None:
            stop()

    def close(self) -> None:
        self._ahead.close()


def holds(fd: int, offset: int, view: memoryview, name: str) -> bool:
    """Whether the raw image open as ``fd`` holds ``view`` at ``offset`` (at most one digest block): the
    read back of a rewritten block, through the image's block source (IOFailure naming ``name`` if short)."""
    from ..lvm.source import fd_source

    buf = membuf.aligned(len(view))
    image = fd_source(fd, offset + len(view), name)
    try:
        image.read_into(offset, buf)
    finally:
        image.close()
    return membuf.same(buf, view)
