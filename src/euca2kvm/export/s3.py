# SPDX-License-Identifier: Apache-2.0
"""Object storage as an export target: ``-o s3://bucket/prefix``.

A volume is uploaded as one object ``prefix/<safe_name(id)>.raw`` (plain bytes) or
``prefix/<safe_name(id)>.raw.gz`` (gzip'd raw, the default: a concatenation of gzip members, one
per 4 MiB block, as Eucalyptus stores its own snapshot objects, so holes cost about 4 KiB per
4 MiB and euca2kvm's gzip snapshot reader reads it back) by a multipart upload streamed from the
block source (:mod:`.s3upload`): nothing is staged on local disk. ``prefix/manifest.json`` is the
same manifest format as a local export's (``output`` is the object's ``s3://`` URL) and is
written last, after the object is complete and its checksums checked, so an entry always names a
complete object.

Errors: a malformed URL, missing credentials or a bucket that does not exist are usage errors
(exit 2); access denied, an unreachable endpoint or any other failed request is an I/O error
(exit 5). An interrupted upload (a failure, SIGKILL, Ctrl-C) is left in progress on purpose: the
next run resumes it (see :mod:`.s3upload`); ``--overwrite`` aborts it and starts again. A site
that gives up on a volume removes its leftover parts with ``aws s3api abort-multipart-upload`` or
a bucket lifecycle rule (AbortIncompleteMultipartUpload). Warm migration passes (``--warm``,
``--sync``: changed parts uploaded, the rest copied server-side) are :mod:`.s3sync`.

This module imports boto3 only when a client is made: ``pip install 'euca2kvm[s3]'``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import FormatError, IOFailure, UsageError
from . import manifest, manifestcheck, sidecar

ENCODINGS = ("gzip", "none")  # gzip'd raw (sparse-friendly), or the raw bytes as they are
EXT = {"gzip": "raw.gz", "none": "raw"}
# Seconds to connect and to wait for a response: a dead endpoint fails in seconds, a part upload
# (tens of MiB) on a slow link still has time to be answered.
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 300
# botocore's own retries ("standard" mode: throttling and transient 5xx) before a request fails.
MAX_ATTEMPTS = 5
# S3 bucket names: 3-63 of lower-case letters, digits, '.', '-' (older buckets may have '_' and
# upper case; Ceph RGW and Eucalyptus OSG allow those too).
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
# Manifest objects are read with the local manifest's bound.
MAX_MANIFEST_BYTES = manifest.MAX_MANIFEST_BYTES

T = TypeVar("T")


def is_s3_url(text: str) -> bool:
    return text.startswith("s3://")


@dataclass(frozen=True)
class S3Url:
    """``s3://bucket/prefix``: objects go under ``prefix/`` (no prefix: the bucket's top)."""

    bucket: str
    prefix: str

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, name: str | None = None) -> str:
        return f"s3://{self.bucket}/{self.key(name)}" if name is not None else \
            f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def parse_url(text: str) -> S3Url:
    """``s3://bucket[/prefix]``; UsageError (exit 2) for anything else."""
    if not is_s3_url(text):
        raise UsageError(f"not an s3:// URL: {text!r}")
    bucket, _, prefix = text[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET.match(bucket):
        raise UsageError(f"{text!r}: not a valid bucket name {bucket!r}")
    parts = prefix.split("/") if prefix else []
    if any(p in ("", ".", "..") for p in parts) or any(ord(c) < 32 or ord(c) == 127 for c in prefix):
        raise UsageError(f"{text!r}: the prefix must be '/'-separated names without empty, '.' or '..' parts "
                         "or control characters")
    return S3Url(bucket, prefix)


def manifest_url(text: str) -> S3Url:
    """The target of ``verify s3://bucket/prefix/manifest.json`` (or ``s3://bucket/prefix``)."""
    u = parse_url(text)
    head, _, last = u.prefix.rpartition("/")
    return S3Url(u.bucket, head) if last == manifest.MANIFEST else u


@dataclass(frozen=True)
class Credentials:
    """Where the client comes from: boto3's normal chain (environment, ~/.aws, instance roles),
    optionally a named profile, and the endpoint of an S3-compatible service (Ceph RGW, MinIO, ...)."""

    endpoint: str | None = None
    profile: str | None = None
    region: str | None = None


def make_client(creds: Credentials) -> Any:
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ProfileNotFound
    except ImportError as e:
        raise UsageError("s3:// targets need boto3: pip install 'euca2kvm[s3]'") from e
    try:
        session = boto3.Session(profile_name=creds.profile)
    except ProfileNotFound as e:
        raise UsageError(f"--s3-profile {creds.profile!r}: no such profile in ~/.aws") from e
    config = Config(connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                    retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                    # path-style addressing: S3-compatible services on a plain host name have no
                    # per-bucket DNS names
                    s3={"addressing_style": "path"} if creds.endpoint else None,
                    # our own SHA-256 part checksums are sent; botocore adds no CRC of its own
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required")
    try:
        return session.client("s3", endpoint_url=creds.endpoint,
                              region_name=creds.region or session.region_name or "us-east-1", config=config)
    except (BotoCoreError, ValueError) as e:
        raise UsageError(f"cannot make an S3 client for {creds.endpoint or 'AWS'}: {e}") from e


def call(what: str, fn: Callable[..., T], **kw: Any) -> T:
    """``fn(**kw)`` with S3 and connection failures turned into typed errors naming ``what``."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    try:
        return fn(**kw)
    except ClientError as e:
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        msg = " ".join(str(err.get("Message", "")).split())[:300]
        if code == "NoSuchBucket":
            raise UsageError(f"{what}: the bucket does not exist (create it first)") from e
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled") \
                or status == 403:
            raise IOFailure(f"{what}: access denied ({code or status}: {msg}); check the credentials "
                            "and the bucket policy") from e
        raise IOFailure(f"{what}: {code or status}: {msg}") from e
    except (NoCredentialsError, PartialCredentialsError) as e:
        raise UsageError(f"{what}: no S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                         "~/.aws/credentials, or --s3-profile)") from e
    except EndpointConnectionError as e:
        raise IOFailure(f"{what}: cannot reach the endpoint ({e})") from e
    except BotoCoreError as e:
        raise IOFailure(f"{what}: {e}") from e


def is_missing(e: BaseException) -> bool:
    """True when ``e`` (raised by :func:`call`) means: no such object (404)."""
    from botocore.exceptions import ClientError

    cause = e.__cause__
    if not isinstance(cause, ClientError):
        return False
    return str(cause.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404", "NotFound")


def check_bucket(client: Any, target: S3Url) -> None:
    """UsageError (exit 2) when the bucket does not exist (HeadBucket answers a bare 404)."""
    try:
        call(f"s3://{target.bucket}", client.head_bucket, Bucket=target.bucket)
    except IOFailure as e:
        if is_missing(e):
            raise UsageError(f"s3://{target.bucket}: the bucket does not exist (create it first)") from e
        raise


def sha256_b64(data: bytes | memoryview) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


# ------------------------------------------------------------------ the manifest object


def object_bytes(obj: dict[str, Any], bound: int, url: str, what: str) -> bytes:
    """The body of a ``get_object`` answer, at most ``bound`` bytes (FormatError, exit 3, beyond:
    whatever its ContentLength says, the bytes are counted)."""
    body = obj["Body"]
    try:
        if int(obj.get("ContentLength", 0)) > bound:
            raise FormatError(f"{what} larger than {bound} bytes", url)
        raw: bytes = body.read(bound + 1)
    finally:
        body.close()
    if len(raw) > bound:
        raise FormatError(f"{what} larger than {bound} bytes", url)
    return raw


def load_manifest(client: Any, target: S3Url, required: bool = False) -> dict[str, Any]:
    """``prefix/manifest.json`` (an empty manifest when there is none, unless ``required``: then
    IOFailure), bounded and schema-checked like a local one."""
    key = target.key(manifest.MANIFEST)
    url = target.url(manifest.MANIFEST)
    try:
        obj = call(url, client.get_object, Bucket=target.bucket, Key=key)
    except IOFailure as e:
        if is_missing(e) and not required:
            return {"format": manifest.FORMAT, "version": manifest.VERSION, "volumes": []}
        if is_missing(e):
            raise IOFailure(f"no {manifest.MANIFEST} at {target.url()}") from e
        raise
    raw = object_bytes(obj, MAX_MANIFEST_BYTES, url, "manifest")
    data = manifestcheck.parse(raw, url)
    if data.get("version", manifest.VERSION) > manifest.VERSION:
        raise FormatError(f"unsupported manifest version {data['version']}", url)
    return data


def record(client: Any, target: S3Url, entry: dict[str, Any]) -> None:
    """Add or replace (by ``output``) one entry of the manifest object.

    A read-modify-write: S3 has no lock, so two runs recording into one prefix at the same moment
    may lose one entry (the object itself stays complete and ``verify`` still checks the rest);
    run one export per prefix at a time.
    """
    data = load_manifest(client, target)
    vols = [v for v in data["volumes"] if v.get("output") != entry["output"]]
    vols.append(entry)
    vols.sort(key=lambda v: (str(v.get("id")), str(v.get("output"))))
    data.update(format=manifest.FORMAT, version=manifest.VERSION, volumes=vols)
    body = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    call(target.url(manifest.MANIFEST), client.put_object, Bucket=target.bucket, Key=target.key(manifest.MANIFEST),
         Body=body, ContentType="application/json", ChecksumAlgorithm="SHA256", ChecksumSHA256=sha256_b64(body))


def object_name(ident: str, encoding: str) -> str:
    """The object's name under the prefix: the injective escaping of local outputs."""
    return f"{manifest.safe_name(ident)}.{EXT[encoding]}"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------------ a warm object's sidecar


def put_blocks(client: Any, target: S3Url, object_name_: str, car: sidecar.Sidecar,
               parts: list[sidecar.Part]) -> dict[str, str]:
    """Store ``<object>.blocks`` (the digests and the parts table, :mod:`.sidecar`) beside the object;
    the entry's ``blocks`` field (its name under the prefix and sha256)."""
    name = sidecar.name_for(object_name_)
    body = sidecar.encode_with_parts(car, parts)
    call(target.url(name), client.put_object, Bucket=target.bucket, Key=target.key(name), Body=body,
         ContentType="application/octet-stream", ChecksumAlgorithm="SHA256", ChecksumSHA256=sha256_b64(body))
    return {"file": name, "sha256": hashlib.sha256(body).hexdigest()}


def load_blocks(client: Any, target: S3Url, field: object, size: int) -> tuple[sidecar.Sidecar, list[sidecar.Part]]:
    """The sidecar object an entry's ``blocks`` field names: read bounded, checked against the sha256
    the entry records (FormatError, exit 3, otherwise: never trusted)."""
    name, sha = sidecar.field_of(field, target.url())
    url = target.url(name)
    bound = sidecar.max_bytes_with_parts(size)
    obj = call(url, client.get_object, Bucket=target.bucket, Key=target.key(name))
    raw = object_bytes(obj, bound, url, f"block-digest object of a {size}-byte disk")
    if hashlib.sha256(raw).hexdigest() != sha:
        raise FormatError("block-digest object does not match the sha256 its manifest entry records", url)
    return sidecar.parse_with_parts(raw, size, url)
