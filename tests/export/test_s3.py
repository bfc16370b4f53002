# SPDX-License-Identifier: Apache-2.0
"""``export -o s3://`` and ``verify s3://`` against a real S3 server (moto in server mode, over HTTP
on 127.0.0.1), with containers made by the real lvm2: objects read back byte-exactly, part
checksums, a killed upload resumes sending only the parts it lacks (and re-sends a stored part
that does not match), verify catches a replaced or missing object, a sparse 1 GiB volume uploads
small as gzip, and bad targets fail with their exit codes and no traceback."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import euca2kvm
from _env import missing, need_root, need_tools
from euca2kvm.errors import EXIT_IO, EXIT_OK, EXIT_USAGE, EXIT_VERIFY

MiB = 1 << 20
BUCKET = "exports"
DENSE = 64 * MiB  # LV size of the dense volume: 8 parts of 8 MiB
SPARSE_DATA = 8 * MiB  # data in the 1 GiB sparse volume
PART_MIB = 8
# Seconds the server sleeps in each part upload while a test wants to kill the client mid-upload.
SLOW_PART = 0.25


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The moto server of this module, with a count of the UploadPart and UploadPartCopy calls it served."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.part_puts = 0
        self.part_copies = 0
        self.delay = 0.0
        self.lock = threading.Lock()

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="testing",
                            aws_secret_access_key="testing", config=Config(s3={"addressing_style": "path"}))


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    try:
        from moto.s3.models import S3Backend
        from moto.server import ThreadedMotoServer
    except ImportError:
        missing("moto[server] not installed (pip install 'moto[server]')")
    port = _free_port()
    srv = Server(f"http://127.0.0.1:{port}")
    original = S3Backend.upload_part

    def counting(self: Any, *a: Any, **kw: Any) -> Any:
        with srv.lock:
            srv.part_puts += 1
        if srv.delay:
            time.sleep(srv.delay)
        return original(self, *a, **kw)

    original_copy = S3Backend.upload_part_copy

    def counting_copy(self: Any, *a: Any, **kw: Any) -> Any:
        with srv.lock:
            srv.part_copies += 1
        if srv.delay:
            time.sleep(srv.delay)
        return original_copy(self, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S3Backend, "upload_part", counting)
        mp.setattr(S3Backend, "upload_part_copy", counting_copy)
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        moto.start()
        try:
            # moto's backends are global to the process: start from an empty cloud.
            urllib.request.urlopen(urllib.request.Request(f"{srv.url}/moto-api/reset", method="POST"),
                                   timeout=30).close()
            srv.client().create_bucket(Bucket=BUCKET)
            yield srv
        finally:
            moto.stop()


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two containers made with the real lvm2: a dense 96 MiB LV full of random bytes and a 1 GiB
    Eucalyptus overlay volume holding 8 MiB of data; each with the sha256 of its LV."""
    need_root()
    need_tools("lvm", "losetup")
    import lvmfix

    d = tmp_path_factory.mktemp("s3vols")
    rnd = random.Random(14)

    def setup(lvm: Any, devs: list[str]) -> None:
        lvm("pvcreate", devs[0])
        lvm("vgcreate", "-s", "4M", "vg-dense", devs[0])
        lvm("lvcreate", "-n", "lv-dense", "-L", f"{DENSE // MiB}M", "vg-dense")

    lv = lvmfix.with_lvm(d, {"vol-dd000001": DENSE + 8 * MiB}, setup)["lv-dense"]
    data = rnd.randbytes(DENSE)
    pos = 0
    for name, phys, k in lvmfix.lv_pieces(lv, 0, DENSE):
        fd = os.open(d / name, os.O_WRONLY)
        try:
            os.pwrite(fd, data[pos : pos + k], phys)
        finally:
            os.close(fd)
        pos += k
    payload = d / "payload"
    with open(payload, "wb") as f:  # 8 MiB of data in four islands, the rest of the 1 GiB a hole
        for i in range(4):
            f.seek(i * 256 * MiB + 3 * MiB)
            f.write(rnd.randbytes(SPARSE_DATA // 4))
    lvmfix.euca_container(d, "vol-5a000001", payload)
    return {"dir": d, "dense": ("vol-dd000001", hashlib.sha256(data).hexdigest(), DENSE),
            "sparse": ("vol-5a000001", payload)}


def padded_sha256(path: Path, size: int) -> str:
    """sha256 of the file's bytes followed by zeros up to ``size``: the LV holding it at its start."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(4 * MiB):
            h.update(b)
    zeros, left = bytes(4 * MiB), size - path.stat().st_size
    while left > 0:
        h.update(zeros[: min(left, len(zeros))])
        left -= len(zeros)
    return h.hexdigest()


def env() -> dict[str, str]:
    e = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
             AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
             AWS_EC2_METADATA_DISABLED="true")  # the credential chain never asks an instance metadata service
    e.pop("AWS_PROFILE", None)
    return e


def cli(*args: str, check: int | None = EXIT_OK, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "euca2kvm", *args], capture_output=True, text=True, timeout=timeout,
                       env=env())
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    return p


def export(server: Server, vols: dict[str, Any], which: str, prefix: str, *extra: str,
           check: int | None = EXIT_OK) -> subprocess.CompletedProcess[str]:
    ident = vols[which][0]
    return cli("export", ident, "--source", str(vols["dir"]), "-o", f"s3://{BUCKET}/{prefix}", "--s3-endpoint",
               server.url, "--s3-part-size", str(PART_MIB), *extra, check=check)


def valid(name: str, doc: Any) -> None:
    """``doc`` valid against the shipped JSON Schema ``name`` (events, verify, manifest)."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    pkg = Path(euca2kvm.__file__).resolve().parent
    files = {p.name.removesuffix(".schema.json"): p for p in (pkg / "schemas").glob("*.schema.json")}
    files["manifest"] = pkg / "export" / "manifest.schema.json"
    docs = {k: json.loads(p.read_text()) for k, p in files.items()}
    reg: Registry = Registry().with_resources((d["$id"], Resource.from_contents(d)) for d in docs.values())
    bad = [e.message[:300] for e in Draft202012Validator(docs[name], registry=reg).iter_errors(doc)]
    assert not bad, (name, bad[:3])


def entries(server: Server, prefix: str) -> list[dict[str, Any]]:
    body = server.client().get_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json")["Body"].read()
    return list(json.loads(body)["volumes"])


def disk_sha256(server: Server, key: str) -> tuple[str, int]:
    """sha256 of the disk an object holds (gunzipped with Python's gzip, not euca2kvm), and its size."""
    body = server.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    h = hashlib.sha256()
    with gzip.GzipFile(fileobj=io.BytesIO(body)) if key.endswith(".gz") else io.BytesIO(body) as f:
        while b := f.read(4 * MiB):
            h.update(b)
    return h.hexdigest(), len(body)


@pytest.mark.parametrize("encoding", ["gzip", "none"])
def test_round_trip_with_part_checksums(server: Server, volumes: dict[str, Any], encoding: str) -> None:
    prefix = f"rt-{encoding}"
    c = server.client()
    ext = "raw.gz" if encoding == "gzip" else "raw"
    key = f"{prefix}/vol-dd000001.{ext}"
    c.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(MiB))  # garbage under the final name
    started = time.monotonic()
    p = export(server, volumes, "dense", prefix, "--s3-encoding", encoding, "--json")
    seconds = time.monotonic() - started
    for line in p.stdout.splitlines():
        valid("events", json.loads(line))
    _, sha, size = volumes["dense"]
    got, object_size = disk_sha256(server, key)
    assert got == sha
    print(f"\ndense {size // MiB} MiB volume, encoding {encoding}: {object_size} bytes uploaded "
          f"({object_size / size:.4f} of raw) in {seconds:.1f} s")
    (entry,) = entries(server, prefix)
    assert entry["output"] == f"s3://{BUCKET}/{key}" and entry["size"] == size and entry["encoding"] == encoding
    assert entry["parts"] == entry["parts_uploaded"] == DENSE // (PART_MIB * MiB)
    # the service's composite checksum is the one the parts make (SHA-256 of the part SHA-256s, "-N")
    head = c.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"].split("-")[0] == entry["checksum_sha256"].split("-")[0]
    assert entry["checksum_sha256"].endswith(f"-{entry['parts']}")
    if encoding == "none":  # parts are fixed slices: the composite from the downloaded bytes themselves
        body = c.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        part = PART_MIB * MiB
        digests = b"".join(hashlib.sha256(body[i : i + part]).digest() for i in range(0, len(body), part))
        assert entry["checksum_sha256"].split("-")[0] == base64.b64encode(hashlib.sha256(digests).digest()).decode()
    valid("manifest", json.loads(c.get_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json")["Body"].read()))
    p = cli("verify", f"s3://{BUCKET}/{prefix}/manifest.json", "--s3-endpoint", server.url, "--json")
    valid("verify", json.loads(p.stdout))
    # a re-run finds the object unchanged and uploads nothing
    before = server.part_puts
    export(server, volumes, "dense", prefix, "--s3-encoding", encoding)
    assert server.part_puts == before


def test_sparse_volume_uploads_small_as_gzip(server: Server, volumes: dict[str, Any], tmp_path: Path) -> None:
    ident, payload = volumes["sparse"]
    started = time.monotonic()
    export(server, volumes, "sparse", "sparse")
    seconds = time.monotonic() - started
    got, object_size = disk_sha256(server, f"sparse/{ident}.raw.gz")
    (entry,) = entries(server, "sparse")
    size = entry["size"]
    assert size >= 1024 * MiB and got == padded_sha256(payload, size)
    assert entry["object_size"] == object_size < 16 * MiB
    print(f"\nsparse {size // MiB} MiB volume with {SPARSE_DATA // MiB} MiB data: {object_size} bytes uploaded "
          f"as gzip ({object_size / size:.4f} of raw) in {seconds:.1f} s")
    cli("verify", f"s3://{BUCKET}/sparse", "--s3-endpoint", server.url)
    # euca2kvm's own reader of gzip'd snapshot objects takes the object as Eucalyptus's own
    local = tmp_path / f"{ident}.raw.gz"
    server.client().download_file(BUCKET, f"sparse/{ident}.raw.gz", str(local))
    cli("export", str(local), "-o", str(tmp_path / "out"))
    (back,) = json.loads((tmp_path / "out" / "manifest.json").read_text())["volumes"]
    assert back["digest"] == entry["digest"] and back["size"] == size


def test_killed_upload_resumes_only_missing_parts(server: Server, volumes: dict[str, Any]) -> None:
    c = server.client()
    prefix = "resume"
    key = f"{prefix}/vol-dd000001.raw"
    ident = volumes["dense"][0]
    server.delay = SLOW_PART
    try:
        p = subprocess.Popen([sys.executable, "-m", "euca2kvm", "export", ident, "--source", str(volumes["dir"]),
                              "-o", f"s3://{BUCKET}/{prefix}", "--s3-endpoint", server.url, "--s3-encoding", "none",
                              "--s3-part-size", str(PART_MIB)], env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        upload_id = None
        while time.monotonic() < deadline and p.poll() is None:
            ups = [u for u in c.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", [])]
            if ups:
                upload_id = ups[0]["UploadId"]
                if len(c.list_parts(Bucket=BUCKET, Key=key, UploadId=upload_id).get("Parts", [])) >= 3:
                    break
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        assert p.stderr is not None
        p.stderr.close()
        time.sleep(2 * SLOW_PART)  # a request the server was still handling is stored or not by now
    finally:
        server.delay = 0
    assert upload_id is not None, "no upload started"
    with pytest.raises(c.exceptions.ClientError):
        c.head_object(Bucket=BUCKET, Key=key)  # nothing presented as complete
    stored = {q["PartNumber"] for q in c.list_parts(Bucket=BUCKET, Key=key, UploadId=upload_id)["Parts"]}
    total = DENSE // (PART_MIB * MiB)
    assert 3 <= len(stored) < total
    # a stored part that is not what the source gives is sent again, never trusted
    c.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=1, Body=os.urandom(PART_MIB * MiB))
    before = server.part_puts
    export(server, volumes, "dense", prefix, "--s3-encoding", "none")
    assert server.part_puts - before == total - len(stored) + 1
    (entry,) = entries(server, prefix)
    assert entry["parts_kept"] == len(stored) - 1 and entry["parts_uploaded"] == total - len(stored) + 1
    assert disk_sha256(server, key)[0] == volumes["dense"][1]
    assert not c.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads")


def test_verify_catches_replaced_and_missing_objects(server: Server, volumes: dict[str, Any]) -> None:
    c = server.client()
    prefix = "victim"
    export(server, volumes, "dense", prefix, "--s3-encoding", "none")
    key = f"{prefix}/vol-dd000001.raw"
    url = f"s3://{BUCKET}/{prefix}/manifest.json"
    cli("verify", url, "--s3-endpoint", server.url)
    original = c.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    forged = bytearray(original)
    forged[5 * MiB] ^= 1  # one flipped bit in an object of the same size
    c.put_object(Bucket=BUCKET, Key=key, Body=bytes(forged))
    p = cli("verify", url, "--s3-endpoint", server.url, "--json", check=EXIT_VERIFY)
    assert [r["status"] for r in json.loads(p.stdout)] == ["mismatch"]
    c.put_object(Bucket=BUCKET, Key=key, Body=original[: len(original) // 2])  # a truncated object
    cli("verify", url, "--s3-endpoint", server.url, check=EXIT_VERIFY)
    c.delete_object(Bucket=BUCKET, Key=key)
    p = cli("verify", url, "--s3-endpoint", server.url, "--json", check=EXIT_IO)
    assert [r["status"] for r in json.loads(p.stdout)] == ["missing"]


def test_bad_targets_fail_cleanly(server: Server, volumes: dict[str, Any], tmp_path: Path) -> None:
    ident = volumes["dense"][0]
    base = ["export", ident, "--source", str(volumes["dir"])]
    cli(*base, "-o", "s3://no-such-bucket/p", "--s3-endpoint", server.url, check=EXIT_USAGE)
    cli(*base, "-o", "s3://exports/../p", "--s3-endpoint", server.url, check=EXIT_USAGE)
    cli(*base, "-o", "s3://exports/p", "--s3-endpoint", f"http://127.0.0.1:{_free_port()}", check=EXIT_IO,
        timeout=120)
    cli(*base, "-o", "s3://exports/p", "--s3-endpoint", server.url, "--format", "qcow2", check=EXIT_USAGE)
    cli(*base, "-o", "s3://exports/p", "--s3-endpoint", server.url, "--sha256", check=EXIT_USAGE)  # gzip'd
    cli("verify", "s3://exports/nothing-here/manifest.json", "--s3-endpoint", server.url, check=EXIT_IO)
    bare = {k: v for k, v in env().items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")}
    p = subprocess.run([sys.executable, "-m", "euca2kvm", *base, "-o", "s3://exports/p", "--s3-endpoint", server.url],
                       capture_output=True, text=True, timeout=120, env=bare)
    assert p.returncode == EXIT_USAGE and "Traceback" not in p.stderr, p.stderr[-2000:]  # no credentials
    assert not server.client().list_objects_v2(Bucket=BUCKET, Prefix="p/").get("Contents")  # nothing written
    assert not list(tmp_path.iterdir())


def dense_upload(server: Server, volumes: dict[str, Any], prefix: str) -> subprocess.Popen[str]:
    """The dense volume's export to ``prefix`` started in the background (stderr kept), for tests that act
    on it mid-upload."""
    return subprocess.Popen([sys.executable, "-m", "euca2kvm", "export", "vol-dd000001", "--source",
                             str(volumes["dir"]), "-o", f"s3://{BUCKET}/{prefix}", "--s3-endpoint", server.url,
                             "--s3-part-size", str(PART_MIB)], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_ctrl_c_leaves_a_resumable_upload_and_overwrite_starts_again(server: Server, volumes: dict[str, Any]) -> None:
    c = server.client()
    prefix = "sigint"
    key = f"{prefix}/vol-dd000001.raw.gz"
    server.delay = SLOW_PART
    try:
        p = dense_upload(server, volumes, prefix)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            ups = c.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", [])
            if ups and c.list_parts(Bucket=BUCKET, Key=key, UploadId=ups[0]["UploadId"]).get("Parts"):
                break
            time.sleep(0.02)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        server.delay = 0
    assert p.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert c.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads")  # left to resume
    with pytest.raises(c.exceptions.ClientError):
        c.head_object(Bucket=BUCKET, Key=key)
    with pytest.raises(c.exceptions.ClientError):
        c.head_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json")  # nothing recorded
    before = server.part_puts
    export(server, volumes, "dense", prefix, "--overwrite")
    assert server.part_puts - before == DENSE // (PART_MIB * MiB)  # every part sent again
    assert not c.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads")
    assert disk_sha256(server, key)[0] == volumes["dense"][1]


def test_source_written_during_upload_is_never_completed(server: Server, volumes: dict[str, Any]) -> None:
    c = server.client()
    prefix = "changing"
    key = f"{prefix}/vol-dd000001.raw.gz"
    container = volumes["dir"] / "vol-dd000001"
    server.delay = SLOW_PART
    try:
        p = dense_upload(server, volumes, prefix)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            if c.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads"):
                break
            time.sleep(0.02)
        with open(container, "r+b") as f:  # the same byte written again: only the file's times change
            f.seek(DENSE // 2)
            b = f.read(1)
            f.seek(DENSE // 2)
            f.write(b)
        _, err = p.communicate(timeout=120)
    finally:
        server.delay = 0
    assert p.returncode == EXIT_IO and "Traceback" not in err, err[-2000:]
    with pytest.raises(c.exceptions.ClientError):
        c.head_object(Bucket=BUCKET, Key=key)
    with pytest.raises(c.exceptions.ClientError):
        c.head_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json")


def test_stored_parts_are_kept_only_when_their_sha256_matches() -> None:
    """Services that record part checksums (AWS, recent Ceph RGW; moto's ListParts does not) are
    compared by SHA-256, whatever the ETag says."""
    from euca2kvm.export.s3 import S3Url, sha256_b64
    from euca2kvm.export.s3upload import Stored, Uploader

    sent: list[int] = []

    class Client:
        def upload_part(self, **kw: Any) -> dict[str, Any]:
            sent.append(kw["PartNumber"])
            return {"ETag": '"e"', "ChecksumSHA256": kw["ChecksumSHA256"]}

    data = [os.urandom(1000) for _ in range(3)]
    stored = {1: Stored("not-an-md5", 1000, sha256_b64(data[0])),  # same bytes: kept
              2: Stored(hashlib.md5(data[1]).hexdigest(), 1000, sha256_b64(b"other")),  # ETag fits, SHA not
              3: Stored(hashlib.md5(data[2]).hexdigest(), 999, None)}  # another size
    up = Uploader(Client(), S3Url(BUCKET, "p"), "p/k", "u", stored)
    for n, d in enumerate(data, 1):
        up.part(n, d)
    up.wait()
    assert sorted(sent) == [2, 3] and up.kept == 1
