# SPDX-License-Identifier: Apache-2.0
"""Export one :class:`~.pipeline.Source` to ``s3://bucket/prefix``: reuse check, upload, re-check
of the source, manifest entry (written last, so an entry always names a complete object)."""

from __future__ import annotations

import time
from typing import Any

from ..errors import IOFailure
from .pipeline import ExportOptions, Source, check_unchanged, fingerprint, identity
from .s3 import S3Url, call, is_missing, load_manifest, now, object_name, put_blocks, record
from .s3upload import PART_SIZE, Progress, upload


def _reusable(client: Any, target: S3Url, prev: dict[str, Any] | None, key: str, src: Source, size: int,
              fmt: str, files: list[str]) -> bool:
    """An object recorded for exactly this source that is still there, unchanged (same ETag and size).
    (``verify`` reads it back; a re-run does not download every object.)"""
    if prev is None or not prev.get("digest") or prev.get("encoding") != fmt or prev.get("size") != size \
            or prev.get("identity") != identity(src) or prev.get("source") != fingerprint(files):
        return False
    try:
        head = call(f"s3://{target.bucket}/{key}", client.head_object, Bucket=target.bucket, Key=key)
    except IOFailure as e:
        if is_missing(e):
            return False
        raise
    return str(head.get("ETag", "")).strip('"') == prev.get("etag") \
        and int(head.get("ContentLength", -1)) == prev.get("object_size")


def export_to_s3(src: Source, client: Any, target: S3Url, opts: ExportOptions, *, encoding: str = "gzip",
                 part_size: int = PART_SIZE, progress: Progress | None = None,
                 on_read: Progress | None = None, warm: bool = False) -> tuple[dict[str, Any], bool]:
    """Upload ``src`` as ``prefix/<id>.raw[.gz]`` and record it; (manifest entry, reused).

    ``warm``: a first warm pass (:mod:`.s3sync`): never a reuse, the source may be written while it
    is read (only its size, inode and LVM metadata must hold), and the per-block digests and the
    parts' byte ranges are stored as ``<object>.blocks`` beside the object; the entry says
    ``"consistent": false``."""
    from .warm import WarmPass

    wp = WarmPass(opts.algorithm) if warm else None
    name = object_name(src.id, encoding)
    key = target.key(name)
    url = target.url(name)
    source = src.blocks
    files = sorted(src.files)
    try:
        previous = next((v for v in load_manifest(client, target)["volumes"] if v.get("output") == url), None)
        if not opts.overwrite and not warm and _reusable(client, target, previous, key, src, source.size, encoding,
                                                         files):
            assert previous is not None
            if progress is not None:
                progress(source.size)
            return previous, True
        state = fingerprint(files)
        started = time.monotonic()
        try:
            res = upload(source, client, target, key, gz=encoding == "gzip", part_size=part_size,
                         workers=opts.workers, overwrite=opts.overwrite, sha256=opts.sha256,
                         algorithm=opts.algorithm, progress=progress, on_read=on_read,
                         # a source that changed while it was read is never completed into an object
                         before_complete=lambda: check_unchanged(src, state, warm=warm),
                         on_block=wp.add if wp is not None else None, layout=warm)
        except IOFailure as e:
            check_unchanged(src, state, e, warm=warm)
            raise
    finally:
        source.close()
    entry: dict[str, Any] = {
        "id": src.id, **src.fields, "size": res.size, "digest": res.digest, "output": url, "format": "raw",
        "encoding": encoding, "format_options": {}, "compressed": encoding == "gzip", "files": files,
        "source": state, "identity": identity(src), "verified": True, "object_size": res.object_size,
        "etag": res.etag, "parts": res.parts, "parts_uploaded": res.parts_uploaded, "parts_kept": res.parts_kept,
        "bytes_read": res.bytes_read, "bytes_uploaded": res.bytes_uploaded, "exported_at": now(),
        "seconds": round(time.monotonic() - started, 3),
    }
    if res.checksum:
        entry["checksum_sha256"] = res.checksum
    if res.sha256:
        entry["sha256"] = res.sha256
    if wp is not None:
        from .sidecar import Sidecar

        car = Sidecar(wp.algorithm, res.size, wp.digests)
        if car.folded() != res.digest:
            raise AssertionError("the sidecar's digests do not fold to the upload's digest")
        entry.update(wp.fields(time.time()), blocks=put_blocks(client, target, name, car, res.layout))
    record(client, target, entry)
    return entry, False
