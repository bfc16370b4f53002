# SPDX-License-Identifier: Apache-2.0
"""Warm migration into object storage: ``export --warm`` / ``--sync -o s3://bucket/prefix``.

The first warm pass is an ordinary upload (:func:`.s3export.export_to_s3` with ``warm``) that also
stores ``<object>.blocks`` beside the object: the digest of every 4 MiB block and where each
multipart part lies in the object (first block, byte offset and length, SHA-256, MD5;
:mod:`.sidecar`). Its name and sha256 are in the entry (part of its identity, as for files), so a
sidecar that was changed is refused, never trusted.

A later pass (``--warm`` again, or ``--sync`` once the instance is stopped) is a delta pass:

1. the object must still be the one recorded (its ETag and size; every copy below is also
   conditional on that ETag), and the source must have the size and LVM metadata it had;
2. the source is read once, digests only, and compared block by block with the sidecar;
3. the entry is marked ``"sync_in_progress": true, "consistent": false``, and a new version of
   the object is built by a multipart upload in the old part layout: a part none of whose blocks
   changed is copied server-side (UploadPartCopy of its byte range in the current object), a part
   holding a changed block is read again from the source, encoded as the first pass did, and
   uploaded (with its SHA-256); a re-encoded part that came out smaller than S3's least part takes
   the next part's blocks in too. Nothing changed: nothing is uploaded or copied at all;
4. the source is checked again (``--sync``: nothing may have written it), each part's checksum as
   the service answers it and then the completed object's composite SHA-256 are checked
   (:class:`.s3upload.Uploader`), and unless ``--no-verify`` the whole object is read back and its
   block digest recomputed (:func:`.s3verify.check_entry`): the entry records ``"verified"``;
5. the new sidecar object, then the entry (new ETag, digest, ``"consistent": true`` for ``--sync``,
   what was read, uploaded and copied) are written.

Interruptions: until CompleteMultipartUpload the old object is untouched and the upload stays in
progress; a re-run resumes it (stored parts whose SHA-256 matches are kept). Killed after the
completion but before the entry was written, the object no longer has the recorded ETag: the
entry, still ``sync_in_progress``, then names an object of unknown layout, and the re-run starts
cleanly with a full first pass (then, for ``--sync``, a delta pass over it). A read-back that does
not match leaves the entry not consistent (exit 6). Only raw/gzip objects of ``--format raw``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from typing import Any

from ..errors import FormatError, IOFailure, UsageError, VerifyError
from ..membuf import aligned
from . import sidecar
from .digest import DIGEST_BLOCK, block_count
from .pipeline import ExportOptions, Progress, Source, check_unchanged, fingerprint
from .s3 import S3Url, call, load_blocks, load_manifest, now, object_name, put_blocks, record
from .s3export import export_to_s3
from .s3upload import PART_SIZE, S3_MIN_PART, Uploader, encode_block, metadata, open_upload, part_size_for
from .sidecar import Part
from .warm import utc


def s3_export_pass(open_source: Callable[[], Source], client: Any, target: S3Url, opts: ExportOptions, final: bool,
                   *, encoding: str = "gzip", part_size: int = PART_SIZE, progress: Progress | None = None,
                   on_read: Progress | None = None) -> tuple[dict[str, Any], bool]:
    """One pass of a warm migration into ``target`` (``final``: ``--sync``) of the source
    ``open_source()`` opens (twice when an interrupted sync must start again with a full pass)."""
    src = open_source()
    name = object_name(src.id, encoding)
    url = target.url(name)
    try:
        prev = next((v for v in load_manifest(client, target)["volumes"] if v.get("output") == url), None)
        if final and (prev is None or "blocks" not in prev):
            raise UsageError(f"{src.id}: no warm export at {target.url()} to sync (run export --warm first)")
        full = prev is None or "blocks" not in prev or (opts.overwrite and not final) or _stale(client, target, name,
                                                                                               prev)
    except BaseException:
        src.blocks.close()
        raise
    if full:
        first, _ = export_to_s3(src, client, target, dataclasses.replace(opts, overwrite=opts.overwrite and not final),
                                encoding=encoding, part_size=part_size, progress=progress, on_read=on_read, warm=True)
        if not final:
            return first, False
        # an interrupted sync that left no usable layout: the full pass above, then the final delta pass
        src = open_source()
        prev = first
    assert prev is not None
    try:
        return delta_pass(src, client, target, name, prev, opts, final, encoding, part_size, progress,
                          on_read), False
    finally:
        src.blocks.close()


def _stale(client: Any, target: S3Url, name: str, entry: dict[str, Any]) -> bool:
    """An interrupted sync that completed its object but recorded nothing (or whose object did not
    verify): the object, or its sidecar, is not the one the entry names. Only then; any other
    mismatch is refused by the delta pass."""
    if not entry.get("sync_in_progress"):
        return False
    try:
        load_blocks(client, target, entry.get("blocks"), int(entry.get("size") or 0))
        head = call(target.url(name), client.head_object, Bucket=target.bucket, Key=target.key(name))
    except (FormatError, IOFailure):
        return True
    return str(head.get("ETag", "")).strip('"') != entry.get("etag")


def delta_pass(src: Source, client: Any, target: S3Url, name: str, entry: dict[str, Any], opts: ExportOptions,
               final: bool, encoding: str, part_size: int, progress: Progress | None,
               on_read: Progress | None) -> dict[str, Any]:
    from .copy import copy_blocks
    from .s3verify import check_entry
    from .sync import reread_block, same_source

    source = src.blocks
    size = source.size
    key, url = target.key(name), target.url(name)
    gz = encoding == "gzip"
    if entry.get("encoding") != encoding or entry.get("format") != "raw":
        raise FormatError(f"{src.id}: the object is encoded {entry.get('encoding')}, not {encoding}; export it "
                          "again with --warm --overwrite", url)
    same_source(src, entry)
    car, parts = load_blocks(client, target, entry["blocks"], size)
    if sum(p.length for p in parts) != entry.get("object_size"):
        raise FormatError(f"the parts table of {entry['blocks'].get('file')} covers {sum(p.length for p in parts)} "
                          f"bytes, the object {entry.get('object_size')}; export it again with --warm --overwrite", url)
    etag = str(entry.get("etag", ""))
    head = call(url, client.head_object, Bucket=target.bucket, Key=key)
    if str(head.get("ETag", "")).strip('"') != etag or int(head.get("ContentLength", -1)) != entry.get("object_size"):
        raise FormatError(f"the object is not the one the last pass recorded (ETag {head.get('ETag')}, expected "
                          f"{etag}); export it again with --warm --overwrite", url)
    algo = car.algorithm
    started = time.time()
    state = fingerprint(src.files)
    new: list[bytes] = [b""] * block_count(size)
    res = copy_blocks(source, None, workers=opts.workers, name=src.id, algorithm=algo,
                      progress=progress, on_read=on_read, on_block=new.__setitem__)
    changed = {i for i, d in enumerate(new) if d != car.digests[i]}
    cur = list(car.digests)
    reread = 0
    up: Uploader | None = None
    result: dict[str, Any] = {}
    if changed:
        marked = {**entry, "consistent": False, "sync_in_progress": True}
        record(client, target, marked)
        upload_id, stored = open_upload(client, target, key, False, metadata(gz, part_size_for(size, part_size), size))
        up = Uploader(client, target, key, upload_id, stored)
        ends = [p.first for p in parts[1:]] + [len(cur)]
        layout: list[Part] = []
        buf = aligned(DIGEST_BLOCK)
        offset = k = 0
        try:
            while k < len(parts):
                number = len(layout) + 1
                if not any(i in changed for i in range(parts[k].first, ends[k])):
                    up.copy(number, parts[k], etag)
                    layout.append(dataclasses.replace(parts[k], offset=offset))
                    offset += parts[k].length
                    k += 1
                    continue
                pieces: list[bytes | memoryview] = []
                first, filled = parts[k].first, 0
                while k < len(parts) and (not pieces or filled < S3_MIN_PART):
                    for i in range(parts[k].first, ends[k]):
                        d, view, got = reread_block(src, i, buf, algo, new[i] if final else None)
                        cur[i] = d
                        reread += got
                        piece = encode_block(view, len(view), gz)
                        pieces.append(piece if isinstance(piece, bytes) else bytes(piece))
                        filled += len(pieces[-1])
                    k += 1
                data = b"".join(pieces)
                layout.append(Part(first, offset, len(data), *_digests(data)))
                offset += len(data)
                up.part(number, data)
        except BaseException:
            up.wait()
            raise
        up.wait()
        check_unchanged(src, state, warm=not final)  # a source written meanwhile is never completed
        new_etag, checksum = up.complete(offset)
        result = {"etag": new_etag, "object_size": offset, "parts": len(layout),
                  "parts_uploaded": up.uploaded, "parts_copied": up.copied, "parts_kept": up.kept,
                  "bytes_uploaded": up.bytes_uploaded, "bytes_copied": up.bytes_copied}
        if checksum:
            result["checksum_sha256"] = checksum
        parts = layout
    else:
        check_unchanged(src, state, warm=not final)
    car = sidecar.Sidecar(algo, size, cur)
    digest = car.folded()
    if final and digest != res.digest:
        raise AssertionError("a final pass whose blocks all match folds to the source's digest")
    done = {k: v for k, v in entry.items() if k != "sync_in_progress"}
    done.update(result, digest=digest)
    if changed:
        done["blocks"] = put_blocks(client, target, name, car, parts)
    checked = time.time()
    if opts.verify and (changed or final):
        status, detail, _ = check_entry(client, target, done)
        if status != "ok":  # never recorded as consistent; the re-run starts again with a full pass
            record(client, target, {**entry, "consistent": False, "sync_in_progress": True})
            raise VerifyError(f"{src.id}: {url} does not match its block digests after the delta pass ({status}: "
                              f"{detail}); export it again with --warm --overwrite")
    ended = time.time()
    warm_before = entry.get("warm") or {}
    warm = dict(warm_before)
    warm["passes"] = int(warm.get("passes", 1)) + 1
    if not final:
        warm.update(started_at=utc(started), ended_at=utc(ended), seconds=round(ended - started, 3))
    done.update(consistent=final, warm=warm, source=fingerprint(src.files), exported_at=now(),
                delta={"at": utc(ended), "since": warm_before.get("ended_at"), "final": final,
                       "blocks": len(cur), "blocks_changed": len(changed),
                       "bytes_read": res.bytes_read + reread,
                       "bytes_written": int(result.get("bytes_uploaded", 0)),
                       "seconds": round(ended - started, 3), "verify_seconds": round(ended - checked, 3)})
    if final:
        done["synced_at"] = utc(ended)
        done["verified"] = opts.verify
    record(client, target, done)
    return done


def _digests(data: bytes) -> tuple[bytes, bytes]:
    return hashlib.sha256(data).digest(), hashlib.md5(data).digest()
