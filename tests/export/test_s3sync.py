# SPDX-License-Identifier: Apache-2.0
"""Warm migration into object storage: ``export --warm`` / ``--sync -o s3://`` against moto in server
mode (the fixtures of test_s3.py), with a container made by the real lvm2 and written between passes.

Ground truth is the LV's final bytes read from the container at the offset lvm2 reports; objects are
downloaded and decoded with Python's own gzip. The server counts UploadPart and UploadPartCopy calls:
a delta pass uploads exactly the parts that hold a changed block and copies the others server-side,
an unchanged volume uploads and copies nothing, a sync killed mid-upload leaves the old object as it
was and resumes, and one killed after completing its object restarts cleanly with a full pass."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from _env import need_root, need_tools
from euca2kvm.errors import EXIT_FORMAT, EXIT_USAGE
from euca2kvm.export import sidecar
from export import test_s3
from export.test_s3 import BUCKET, PART_MIB, SLOW_PART, Server, cli, entries, env, valid

server = test_s3.server  # the moto server fixture, in this module too

MiB = 1 << 20
BLOCK = 4 * MiB
LV_MIB = 64  # 16 blocks; 8 parts of 8 MiB raw
DATA_MIB = 48  # random bytes; the last 16 MiB of the LV never written (zeros)
IDENT = "vg-s3w/lv-s3w"
NAME = "vg-s3w_lv-s3w"


@pytest.fixture
def container(tmp_path: Path) -> dict[str, Any]:
    """A fresh container with one linear LV, its first DATA_MIB random; its dir, file, LV offset and size."""
    need_root()
    need_tools("lvm", "losetup")
    from lvmfix import linear_container

    d = tmp_path / "vols"
    d.mkdir()
    c = linear_container(d, "vg-s3w", "lv-s3w", LV_MIB)
    with open(c["file"], "r+b") as f:
        f.seek(c["offset"])
        f.write(os.urandom(DATA_MIB * MiB))
    return c


def lv_bytes(c: dict[str, Any]) -> bytes:
    with open(c["file"], "rb") as f:
        f.seek(c["offset"])
        return f.read(c["size"])


def write_blocks(c: dict[str, Any], blocks: list[int]) -> None:
    """The guest writes 4 KiB of new bytes into each of ``blocks``."""
    with open(c["file"], "r+b") as f:
        for b in blocks:
            f.seek(c["offset"] + b * BLOCK + 8192)
            f.write(os.urandom(4096))


def run(server: Server, c: dict[str, Any], prefix: str, encoding: str, *extra: str,
        check: int | None = 0) -> subprocess.CompletedProcess[str]:
    return cli("export", IDENT, "--source", str(c["dir"]), "-o", f"s3://{BUCKET}/{prefix}", "--s3-endpoint",
               server.url, "--s3-part-size", str(PART_MIB), "--s3-encoding", encoding, *extra, check=check)


def decoded(server: Server, key: str) -> bytes:
    body = server.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return gzip.GzipFile(fileobj=io.BytesIO(body)).read() if key.endswith(".gz") else body


def parts_of(server: Server, prefix: str, e: dict[str, Any]) -> list[sidecar.Part]:
    """The parts table of the entry's sidecar object (checked against the sha256 the entry records)."""
    raw = server.client().get_object(Bucket=BUCKET, Key=f"{prefix}/{e['blocks']['file']}")["Body"].read()
    assert hashlib.sha256(raw).hexdigest() == e["blocks"]["sha256"]
    car, parts = sidecar.parse_with_parts(raw, e["size"], "test")
    assert car.folded() == e["digest"] and sum(p.length for p in parts) == e["object_size"]
    return parts


def holding(parts: list[sidecar.Part], blocks: list[int], count: int) -> list[sidecar.Part]:
    """Those of ``parts`` that hold one of ``blocks``."""
    ends = [p.first for p in parts[1:]] + [count]
    return [p for p, end in zip(parts, ends, strict=True) if any(p.first <= b < end for b in blocks)]


def counts(server: Server) -> tuple[int, int]:
    return server.part_puts, server.part_copies


@pytest.mark.parametrize("encoding", ["gzip", "none"])
def test_warm_then_sync_uploads_only_changed_parts(server: Server, container: dict[str, Any], encoding: str) -> None:
    prefix = f"warm-{encoding}"
    key = f"{prefix}/{NAME}.{'raw.gz' if encoding == 'gzip' else 'raw'}"
    run(server, container, prefix, encoding, "--sync", check=EXIT_USAGE)  # nothing to sync yet
    run(server, container, prefix, encoding, "--warm")
    (e,) = entries(server, prefix)
    assert e["consistent"] is False and e["blocks"]["file"] == f"{key.split('/')[-1]}.blocks"
    parts = parts_of(server, prefix, e)
    assert decoded(server, key) == lv_bytes(container)
    count = LV_MIB * MiB // BLOCK

    write_blocks(container, [1])  # a second warm pass narrows the delta
    before = counts(server)
    run(server, container, prefix, encoding, "--warm")
    (e,) = entries(server, prefix)
    assert e["consistent"] is False and e["warm"]["passes"] == 2 and e["delta"]["blocks_changed"] == 1
    assert counts(server) == (before[0] + 1, before[1] + len(parts) - 1)
    parts = parts_of(server, prefix, e)
    assert decoded(server, key) == lv_bytes(container)

    changed = [9, 14]  # 14 in the never-written quarter: its gzip member grows from ~4 KiB to ~4 MiB
    write_blocks(container, changed)
    uploads = len(holding(parts, changed, count))
    before = counts(server)
    run(server, container, prefix, encoding, "--sync")
    (e,) = entries(server, prefix)
    final = lv_bytes(container)
    assert hashlib.sha256(decoded(server, key)).digest() == hashlib.sha256(final).digest()
    assert e["consistent"] is True and e["verified"] is True and "sync_in_progress" not in e
    assert e["delta"]["blocks_changed"] == 2
    assert counts(server) == (before[0] + uploads, before[1] + len(parts) - uploads)
    assert e["parts_uploaded"] == uploads and e["parts_copied"] == len(parts) - uploads
    new_parts = parts_of(server, prefix, e)
    sent = sum(p.length for p in holding(new_parts, changed, count))
    assert e["bytes_uploaded"] == e["delta"]["bytes_written"] == sent <= uploads * (2 * BLOCK + 64 * 1024)
    print(f"\n{encoding}: sync of {len(changed)} changed blocks uploaded {uploads} of {len(parts)} parts, "
          f"{e['bytes_uploaded']} of {e['object_size']} bytes; {e['bytes_copied']} copied server-side")
    head = server.client().head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"].split("-")[0] == e["checksum_sha256"].split("-")[0]

    before = counts(server)  # an unchanged volume: nothing uploaded, nothing copied
    run(server, container, prefix, encoding, "--sync")
    assert counts(server) == before and entries(server, prefix)[0]["consistent"] is True
    doc = server.client().get_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json")["Body"].read()
    valid("manifest", json.loads(doc))
    cli("verify", f"s3://{BUCKET}/{prefix}/manifest.json", "--s3-endpoint", server.url)


def test_killed_sync_keeps_the_old_object_and_resumes(server: Server, container: dict[str, Any]) -> None:
    c = server.client()
    prefix = "sync-killed"
    key = f"{prefix}/{NAME}.raw"
    run(server, container, prefix, "none", "--warm")
    (warm,) = entries(server, prefix)
    warm_bytes = lv_bytes(container)
    write_blocks(container, list(range(0, 16, 2)))  # one block in every part: every part uploaded
    server.delay = SLOW_PART
    try:
        p = subprocess.Popen([sys.executable, "-m", "euca2kvm", "export", IDENT, "--source", str(container["dir"]),
                              "-o", f"s3://{BUCKET}/{prefix}", "--s3-endpoint", server.url, "--s3-encoding", "none",
                              "--s3-part-size", str(PART_MIB), "--sync"], env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        stored = 0
        while time.monotonic() < deadline and p.poll() is None and stored < 3:
            for u in c.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", []):
                stored = len(c.list_parts(Bucket=BUCKET, Key=key, UploadId=u["UploadId"]).get("Parts", []))
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        time.sleep(2 * SLOW_PART)  # a request the server was still handling is stored or not by now
    finally:
        server.delay = 0
    assert stored >= 3, "the sync did not get to upload parts"
    # the object is still the warm pass's, the entry says a sync is in progress, never consistent
    assert c.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"') == warm["etag"]
    assert decoded(server, key) == warm_bytes
    (e,) = entries(server, prefix)
    assert e["sync_in_progress"] is True and e["consistent"] is False
    before = server.part_puts
    run(server, container, prefix, "none", "--sync")
    (e,) = entries(server, prefix)
    assert e["consistent"] is True and e["parts_kept"] >= 3 and server.part_puts - before == 8 - e["parts_kept"]
    assert decoded(server, key) == lv_bytes(container)
    assert not c.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads")


def test_sync_completed_but_unrecorded_restarts_cleanly(server: Server, container: dict[str, Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between CompleteMultipartUpload and the entry: the re-run sees an object that is not the one
    recorded and starts again with a full pass; a changed sidecar or a replaced object is refused."""
    from euca2kvm.cli.export_cmd import volume_source
    from euca2kvm.eucalyptus.discovery import discover
    from euca2kvm.export import s3sync
    from euca2kvm.export.formats import output_format
    from euca2kvm.export.pipeline import ExportOptions
    from euca2kvm.export.s3 import parse_url

    prefix = "sync-unrecorded"
    key = f"{prefix}/{NAME}.raw.gz"
    run(server, container, prefix, "gzip", "--warm")
    write_blocks(container, [3])
    real = s3sync.record

    def die_at_the_end(client: Any, target: Any, entry: dict[str, Any]) -> None:
        if "synced_at" in entry:
            raise KeyboardInterrupt
        real(client, target, entry)

    monkeypatch.setattr(s3sync, "record", die_at_the_end)
    vol = discover([str(container["dir"])], check_in_use=False).find(IDENT)
    opts = ExportOptions(fmt=output_format("raw"), workers=2, warm=True)
    with pytest.raises(KeyboardInterrupt):
        s3sync.s3_export_pass(lambda: volume_source(vol), server.client(), parse_url(f"s3://{BUCKET}/{prefix}"),
                              opts, True, part_size=PART_MIB * MiB)
    monkeypatch.setattr(s3sync, "record", real)
    (e,) = entries(server, prefix)
    assert e["sync_in_progress"] is True and e["consistent"] is False
    before = server.part_puts
    run(server, container, prefix, "gzip", "--sync")
    (e,) = entries(server, prefix)
    assert e["consistent"] is True and server.part_puts - before == len(parts_of(server, prefix, e))
    assert decoded(server, key) == lv_bytes(container)
    # a sidecar object that is not the one recorded, then an object replaced behind the manifest's back
    c = server.client()
    side = f"{prefix}/{e['blocks']['file']}"
    good = c.get_object(Bucket=BUCKET, Key=side)["Body"].read()
    c.put_object(Bucket=BUCKET, Key=side, Body=good[:-1] + bytes([good[-1] ^ 1]))
    run(server, container, prefix, "gzip", "--sync", check=EXIT_FORMAT)
    c.put_object(Bucket=BUCKET, Key=side, Body=good)
    c.put_object(Bucket=BUCKET, Key=key, Body=c.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    run(server, container, prefix, "gzip", "--sync", check=EXIT_FORMAT)


def test_part_shrunk_below_the_least_part_takes_the_next_in(server: Server, container: dict[str, Any]) -> None:
    """Blocks 2 and 3 (one gzip part) zeroed: their members shrink to a few KiB, under S3's 5 MiB least
    part, so the next part's blocks are encoded into the same part; the rest is still copied."""
    prefix = "sync-shrunk"
    key = f"{prefix}/{NAME}.raw.gz"
    run(server, container, prefix, "gzip", "--warm")
    (e,) = entries(server, prefix)
    parts = parts_of(server, prefix, e)
    assert [p.first for p in parts[:3]] == [0, 2, 4]
    with open(container["file"], "r+b") as f:
        f.seek(container["offset"] + 2 * BLOCK)
        f.write(bytes(2 * BLOCK))
    before = counts(server)
    run(server, container, prefix, "gzip", "--sync")
    (e,) = entries(server, prefix)
    new_parts = parts_of(server, prefix, e)
    assert [p.first for p in new_parts] == [0, 2, *[p.first for p in parts[3:]]]
    assert new_parts[1].length >= 5 * MiB and e["consistent"] is True
    assert counts(server) == (before[0] + 1, before[1] + len(parts) - 2)
    assert decoded(server, key) == lv_bytes(container)
    write_blocks(container, [7])  # and a sync without the read-back of the whole object
    run(server, container, prefix, "gzip", "--sync", "--no-verify")
    (e,) = entries(server, prefix)
    assert e["consistent"] is True and e["verified"] is False and e["delta"]["blocks_changed"] == 1
    assert decoded(server, key) == lv_bytes(container)
