# SPDX-License-Identifier: Apache-2.0
"""One volume into one object: blocks in order → parts → a resumable multipart upload.

The block source is read in 4 MiB digest blocks by ``workers`` threads (hashing, and for gzip
compressing each block into a gzip member of its own, in parallel; zlib and the hashes release
the GIL). A block that the source says is all ZERO/HOLE is neither read nor compressed: its digest
and its gzip member (:data:`ZERO_MEMBER`) are known. Blocks are folded in order into the block
digest of the disk (the manifest's ``digest``, the same value a local export records) and
appended to the current part; a part is closed at a block boundary once it holds at least the part
size. So the parts depend only on the disk's bytes, the encoding and the part size: a second run
produces the same parts again.

Every part is sent with its SHA-256 (``ChecksumAlgorithm="SHA256"``); the checksum the service
answers must be ours, and the composite checksum of the completed object must be the one the parts
make (SHA-256 of the parts' digests, ``-N``). Services that return no checksums (Eucalyptus OSG,
older Ceph RGW) are checked by the part ETag (the MD5 of the part) instead.

**Resume.** An upload of the same key left in progress (ListMultipartUploads) is continued: its
stored parts (ListParts) are compared with the parts this run produces again — by SHA-256 where the
service records it, else by size and MD5 ETag —, a match is kept, anything else is uploaded again;
the object is completed with this run's parts only. A stored part is never trusted blindly.

**Memory** is bounded by the blocks in flight, ``(workers + EXTRA_INFLIGHT) × 8 MiB`` (a block and
its compressed member), plus the part being filled and at most ``UPLOADS_IN_FLIGHT`` parts being
sent, ``(1 + UPLOADS_IN_FLIGHT) × (part size + 4 MiB)``: 156 MiB with the defaults (4 workers,
32 MiB parts). Nothing is written to local disk.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..blocks import BlockSource, Kind
from ..errors import FormatError, UsageError, VerifyError
from ..units import MiB
from .copy import BlockHook, copy_blocks
from .digest import DEFAULT, DIGEST_BLOCK, ZEROS, Algorithm
from .s3 import S3Url, call
from .sidecar import Part

# Default part size: large enough that per-request overhead is noise on a fast link, small enough
# that parts in flight stay a small memory budget. A multiple of the digest block.
PART_SIZE = 32 * MiB
# S3 refuses parts under 5 MiB (but the last); parts are whole digest blocks, so 8 MiB is the least.
MIN_PART_SIZE = 8 * MiB
# The service's own least part (all but the last): a delta pass's re-encoded part must reach it.
S3_MIN_PART = 5 * MiB
# S3 allows 10,000 parts; the part size grows with the disk so that a 16 TiB volume fits, with
# room for gzip's few bytes of overhead per member on incompressible data.
MAX_PARTS = 9000
# Parts sent at once: one on the wire while the next is read, hashed and compressed.
UPLOADS_IN_FLIGHT = 2
# Deflate level of data blocks: the fastest (the upload should not wait for deflate); zero
# blocks use the smallest member there is, made once.
GZIP_LEVEL = 1
ZERO_LEVEL = 9

Progress = Callable[[int], None]


@functools.lru_cache(maxsize=4)
def zero_member(length: int) -> bytes:
    """A gzip member of ``length`` zero bytes (about 4 KiB for a whole block)."""
    return gzip_member(ZEROS[:length], ZERO_LEVEL)


def gzip_member(data: bytes | bytearray | memoryview, level: int = GZIP_LEVEL) -> bytes:
    """One complete gzip member (header with mtime 0, deflate, CRC-32 and size trailer): the same
    bytes for the same input, so a resumed upload produces the same parts."""
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def encode_block(view: memoryview | None, n: int, gz: bool) -> bytes | memoryview:
    """A block's bytes in the object: a gzip member, or the bytes (None: ``n`` zero bytes). The same
    bytes for the same block, so parts made again (a resume, a delta pass) are the same parts."""
    if view is None or ZEROS.startswith(view):
        return zero_member(n) if gz else ZEROS[:n]
    return gzip_member(view) if gz else bytes(view)  # the view's buffer is reused: copy


def metadata(gz: bool, part_size: int, size: int) -> dict[str, str]:
    return {"euca2kvm-encoding": "gzip" if gz else "none", "euca2kvm-part-size": str(part_size),
            "euca2kvm-size": str(size)}


def part_size_for(size: int, wanted: int = PART_SIZE) -> int:
    """``wanted`` rounded up to whole digest blocks, grown so that the disk fits in MAX_PARTS parts."""
    need = max(wanted, MIN_PART_SIZE, -(-size // MAX_PARTS))
    return -(-need // DIGEST_BLOCK) * DIGEST_BLOCK


@dataclass
class Stored:
    """A part already in the service: what ListParts says of it."""

    etag: str
    size: int
    checksum: str | None


@dataclass
class UploadResult:
    digest: str
    sha256: str | None
    size: int  # disk bytes
    object_size: int  # bytes of the object
    parts: int
    parts_uploaded: int
    parts_kept: int
    bytes_read: int
    bytes_uploaded: int
    etag: str
    checksum: str | None  # the object's composite SHA-256 ("<base64>-<parts>"), as the service confirmed it
    upload_id: str = field(default="")
    layout: list[Part] = field(default_factory=list)  # where each part lies (asked for: ``layout=True``)


class Uploader:
    """Parts of one multipart upload, sent (or kept) in order, checked, and completed."""

    def __init__(self, client: Any, target: S3Url, key: str, upload_id: str, stored: dict[int, Stored]) -> None:
        self.client, self.target, self.key, self.upload_id = client, target, key, upload_id
        self.url = f"s3://{target.bucket}/{key}"
        self.stored = stored
        self.done: dict[int, dict[str, Any]] = {}
        self.digests: dict[int, bytes] = {}
        self.uploaded = self.kept = self.copied = self.bytes_uploaded = self.bytes_copied = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=UPLOADS_IN_FLIGHT, thread_name_prefix="s3-part")
        self._pending: list[Future[None]] = []
        self._slots = threading.Semaphore(UPLOADS_IN_FLIGHT)

    def part(self, number: int, data: bytes) -> None:
        """Keep stored part ``number`` if it holds exactly ``data``, else send ``data`` (in the background)."""
        raw = hashlib.sha256(data).digest()
        checksum = base64.b64encode(raw).decode("ascii")
        self.digests[number] = raw
        if self._keep(number, len(data), checksum, lambda: hashlib.md5(data).hexdigest()):
            return
        self._submit(self._send, number, data, checksum)

    def copy(self, number: int, part: Part, etag: str) -> None:
        """Part ``number`` copied server-side (UploadPartCopy) from ``part``'s byte range of this key's
        current object, which must still be the one of ETag ``etag``; a stored part that already holds
        it is kept."""
        checksum = base64.b64encode(part.sha256).decode("ascii")
        self.digests[number] = part.sha256
        if self._keep(number, part.length, checksum, part.md5.hex):
            return
        self._submit(self._copy, number, part, etag, checksum)

    def _keep(self, number: int, size: int, checksum: str, md5_hex: Callable[[], str]) -> bool:
        """Keep stored part ``number`` when it holds these bytes: its size and SHA-256 (or, stored
        without a checksum, its MD5 ETag) match."""
        old = self.stored.get(number)
        if old is None or old.size != size or not (old.checksum == checksum if old.checksum
                                                   else old.etag == md5_hex()):
            return False
        self.done[number] = {"PartNumber": number, "ETag": f'"{old.etag}"', "ChecksumSHA256": checksum}
        self.kept += 1
        return True

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the upload pool, at most UPLOADS_IN_FLIGHT at once."""
        self._check_pending()
        self._slots.acquire()
        try:
            self._pending.append(self._pool.submit(fn, *args))
        except BaseException:
            self._slots.release()
            raise

    def _copy(self, number: int, part: Part, etag: str, checksum: str) -> None:
        try:
            resp = call(f"{self.url} part {number} (copy)", self.client.upload_part_copy, Bucket=self.target.bucket,
                        Key=self.key, UploadId=self.upload_id, PartNumber=number,
                        CopySource={"Bucket": self.target.bucket, "Key": self.key},
                        CopySourceRange=f"bytes={part.offset}-{part.offset + part.length - 1}",
                        CopySourceIfMatch=f'"{etag}"')
            res = resp.get("CopyPartResult", {})
            got = res.get("ChecksumSHA256")
            petag = str(res.get("ETag", "")).strip('"')
            if got is not None and got != checksum:
                raise VerifyError(f"{self.url} part {number}: the copied range has SHA-256 {got}, not {checksum}")
            if got is None and "-" not in petag and petag != part.md5.hex():
                raise VerifyError(f"{self.url} part {number}: the copied range has ETag {petag}, not the part's MD5")
            with self._lock:
                self.done[number] = {"PartNumber": number, "ETag": f'"{petag}"', "ChecksumSHA256": checksum}
                self.copied += 1
                self.bytes_copied += part.length
        finally:
            self._slots.release()

    def _send(self, number: int, data: bytes, checksum: str) -> None:
        try:
            resp = call(f"{self.url} part {number}", self.client.upload_part, Bucket=self.target.bucket,
                        Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data,
                        ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum)
            got = resp.get("ChecksumSHA256")
            etag = str(resp.get("ETag", "")).strip('"')
            if got is not None and got != checksum:
                raise VerifyError(f"{self.url} part {number}: the service stored SHA-256 {got}, sent {checksum}")
            if got is None and "-" not in etag and etag != hashlib.md5(data).hexdigest():
                raise VerifyError(f"{self.url} part {number}: the service stored ETag {etag}, not the part's MD5")
            with self._lock:
                self.done[number] = {"PartNumber": number, "ETag": f'"{etag}"', "ChecksumSHA256": checksum}
                self.uploaded += 1
                self.bytes_uploaded += len(data)
        finally:
            self._slots.release()

    def _check_pending(self) -> None:
        still = []
        for f in self._pending:
            if f.done():
                f.result()  # raises a failed part's error
            else:
                still.append(f)
        self._pending = still

    def wait(self) -> None:
        try:
            for f in self._pending:
                f.result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def complete(self, size: int) -> tuple[str, str | None]:
        """Complete with this run's parts (``size`` bytes in all); (ETag, composite checksum), checked."""
        parts = [self.done[n] for n in sorted(self.done)]
        resp = call(self.url, self.client.complete_multipart_upload, Bucket=self.target.bucket, Key=self.key,
                    UploadId=self.upload_id, MultipartUpload={"Parts": parts})
        want = base64.b64encode(hashlib.sha256(b"".join(self.digests[n] for n in sorted(self.digests))).digest())
        composite = f"{want.decode('ascii')}-{len(parts)}"
        # What completed: the object's size and, where the service keeps it, its composite checksum
        # (CompleteMultipartUpload does not always answer it; HeadObject with checksum mode does).
        head = call(self.url, self.client.head_object, Bucket=self.target.bucket, Key=self.key, ChecksumMode="ENABLED")
        if int(head.get("ContentLength", -1)) != size:
            raise VerifyError(f"{self.url}: the completed object has {head.get('ContentLength')} bytes, the parts "
                              f"{size}")
        got = resp.get("ChecksumSHA256") or head.get("ChecksumSHA256")
        if got is None:
            return str(resp.get("ETag", "")).strip('"'), None
        if got.split("-")[0] != composite.split("-")[0]:
            raise VerifyError(f"{self.url}: the completed object's SHA-256 {got} is not its parts' {composite}")
        return str(resp.get("ETag", "")).strip('"'), composite


def open_upload(client: Any, target: S3Url, key: str, overwrite: bool, metadata: dict[str, str]
                ) -> tuple[str, dict[int, Stored]]:
    """(upload id, parts already stored): the newest upload of ``key`` left in progress, or a new one.
    ``overwrite`` aborts every upload of ``key`` left in progress first."""
    url = f"s3://{target.bucket}/{key}"
    uploads: list[dict[str, Any]] = []
    kw: dict[str, Any] = {"Bucket": target.bucket, "Prefix": key}
    while True:
        page = call(url, client.list_multipart_uploads, **kw)
        uploads += [u for u in page.get("Uploads", []) if u.get("Key") == key]
        if not page.get("IsTruncated"):
            break
        kw.update(KeyMarker=page.get("NextKeyMarker"), UploadIdMarker=page.get("NextUploadIdMarker"))
    if overwrite:
        for u in uploads:
            call(url, client.abort_multipart_upload, Bucket=target.bucket, Key=key, UploadId=u["UploadId"])
        uploads = []
    if uploads:
        newest = max(uploads, key=lambda u: u.get("Initiated") or 0)
        return newest["UploadId"], list_parts(client, target, key, newest["UploadId"])
    resp = call(url, client.create_multipart_upload, Bucket=target.bucket, Key=key, ChecksumAlgorithm="SHA256",
                ContentType="application/octet-stream", Metadata=metadata)
    return resp["UploadId"], {}


def list_parts(client: Any, target: S3Url, key: str, upload_id: str) -> dict[int, Stored]:
    out: dict[int, Stored] = {}
    kw: dict[str, Any] = {"Bucket": target.bucket, "Key": key, "UploadId": upload_id}
    while True:
        page = call(f"s3://{target.bucket}/{key}", client.list_parts, **kw)
        for p in page.get("Parts", []):
            out[int(p["PartNumber"])] = Stored(str(p.get("ETag", "")).strip('"'), int(p.get("Size", -1)),
                                               p.get("ChecksumSHA256"))
        if not page.get("IsTruncated"):
            return out
        kw["PartNumberMarker"] = page.get("NextPartNumberMarker")


def upload(source: BlockSource, client: Any, target: S3Url, key: str, *, gz: bool, part_size: int = PART_SIZE,
           workers: int = 4, overwrite: bool = False, sha256: bool = False, algorithm: Algorithm = DEFAULT,
           progress: Progress | None = None, on_read: Progress | None = None,
           before_complete: Callable[[], None] | None = None,
           on_block: Callable[[int, bytes], None] | None = None, layout: bool = False) -> UploadResult:
    """Stream ``source`` into the object ``key`` (see the module docstring). ``before_complete`` runs
    once every part is stored and may raise: the object is then never completed (the upload stays
    in progress, to be resumed). ``on_block`` gets each block's digest in order; ``layout``: the
    result says where each part lies (a warm pass's sidecar, :mod:`.s3sync`)."""
    if Kind.ERROR in source.kinds():
        raise FormatError(f"{source.name}: has 'error' ranges; reading them fails under device-mapper too, "
                          "refusing to export invented bytes")
    if sha256 and gz:  # the plain sha256 would need every uncompressed byte hashed in order
        raise UsageError("--sha256 is offered for raw s3 uploads only (the block digest is always recorded)")
    size = source.size
    psize = part_size_for(size, part_size)
    upload_id, stored = open_upload(client, target, key, overwrite, metadata(gz, psize, size))
    up = Uploader(client, target, key, upload_id, stored)
    pieces: list[bytes | memoryview] = []
    filled = 0
    number = 0
    object_size = 0
    first = 0
    parts: list[Part] = []

    def flush() -> None:
        nonlocal pieces, filled, number, object_size
        number += 1
        data = b"".join(pieces)
        if layout:
            parts.append(Part(first, object_size, len(data), hashlib.sha256(data).digest(),
                              hashlib.md5(data).digest()))
        object_size += len(data)
        pieces, filled = [], 0
        up.part(number, data)

    def take(index: int, payload: bytes | memoryview) -> None:
        nonlocal filled, first
        if not pieces:
            first = index
        pieces.append(payload)
        filled += len(payload)
        if filled >= psize:
            flush()

    try:
        res = copy_blocks(source, None, sha256=sha256, workers=workers, progress=progress, algorithm=algorithm,
                          on_read=on_read, on_block=on_block,
                          hook=BlockHook(lambda view, n: encode_block(view, n, gz), take))
        if pieces or number == 0:
            flush()
    except BaseException:
        with contextlib.suppress(BaseException):  # the first failure is the one reported
            up.wait()
        raise
    up.wait()
    if before_complete is not None:
        before_complete()
    etag, checksum = up.complete(object_size)
    assert res.digest is not None
    return UploadResult(res.digest, res.sha256, size, object_size, number, up.uploaded, up.kept, res.bytes_read,
                        up.bytes_uploaded, etag, checksum, upload_id, parts)
