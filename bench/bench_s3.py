#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""S3 upload benchmark: ``export -o s3://`` (gzip and raw encodings) against a plain boto3 upload of
the same bytes, same run, into a local moto server (127.0.0.1 only).

    python bench/bench_s3.py [--runs 3] [--workdir /var/tmp/euca2kvm-bench-s3] [--dense-mib 512]

Builds two containers with the writers of ``bench/bench_export.py`` (no root needed): dense, an LV
of ``--dense-mib`` MiB of random data; sparse, an LV 8 times that size holding an eighth of it in
four islands. Prints, per case and encoding, the median wall time, the disk's size
over that time (MiB/s of disk), the uploaded object's size against the raw size, and the peak RSS
of the euca2kvm process; the baseline is ``boto3 upload_file`` of the LV's bytes (dense only: the
file it reads is the raw LV). moto keeps objects in memory and on temporary files: absolute rates
are moto's, the ratios are what to compare. Not a test.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export import EXTENT, PE_START, dashed, fill, lv_text, uuid, vg_text, write_pv  # noqa: E402

MiB = 1 << 20
BUCKET = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    return dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                AWS_EC2_METADATA_DISABLED="true")  # no instance metadata service is asked


def client(url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench",
                        aws_secret_access_key="bench", config=Config(s3={"addressing_style": "path"}))


def timed(argv: list[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env())
    _, status, ru = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {argv}: {proc.stderr.read().decode() if proc.stderr else ''}")
    return dt, ru.ru_maxrss


def build(work: Path, dense_mib: int) -> dict[str, dict[str, int | str]]:
    """The two containers (rebuilt when --dense-mib changed)."""
    vols = work / "volumes"
    vols.mkdir(parents=True, exist_ok=True)
    stamp = work / f"built-{dense_mib}"
    n = dense_mib * (1 << 20) // EXTENT
    cases: dict[str, dict[str, int | str]] = {
        "dense": {"id": "vol-b5300001", "size": n * EXTENT, "data": n * EXTENT},
        "sparse": {"id": "vol-b5300002", "size": 8 * n * EXTENT, "data": n * EXTENT},
    }
    if stamp.exists():
        return cases
    for i, (name, case) in enumerate(cases.items(), 1):
        p = vols / str(case["id"])
        count = int(case["size"]) // EXTENT
        text = vg_text(f"vg-{name}", f"S3Vg{i}-0000-1111-2222-3333-4444-555555", 1,
                       [("pv0", dashed(uuid(i)), PE_START // 512, count)],
                       lv_text(f"lv-{name}", f"S3Lv{i}-0000-1111-2222-3333-4444-555555", [(count, 1, '"pv0", 0')]))
        write_pv(p, PE_START + count * EXTENT, uuid(i), text)
        if name == "dense":
            fill(p, PE_START, count * EXTENT, 1)
        else:
            island = int(case["data"]) // 4
            for k in range(4):
                fill(p, PE_START + k * (int(case["size"]) // 4), island, 10 + k)
    stamp.touch()
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/euca2kvm-bench-s3"))
    ap.add_argument("--dense-mib", type=int, default=512)
    ap.add_argument("--cases", default="dense,sparse")
    args = ap.parse_args()
    cases = build(args.workdir, args.dense_mib)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        c = client(url)
        for _ in range(100):
            try:
                c.create_bucket(Bucket=BUCKET)
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                time.sleep(0.1)
        vols = str(args.workdir / "volumes")
        for name in args.cases.split(","):
            case = cases[name]
            size = int(str(case["size"]))
            for enc in ("gzip", "none"):
                times, rss = [], 0
                for run in range(args.runs):
                    prefix = f"{name}-{enc}-{run}"
                    dt, r = timed([sys.executable, "-m", "euca2kvm", "export", str(case["id"]), "--source", vols,
                                   "-o", f"s3://{BUCKET}/{prefix}", "--s3-endpoint", url, "--s3-encoding", enc])
                    times.append(dt)
                    rss = max(rss, r)
                    ext = "raw.gz" if enc == "gzip" else "raw"
                    obj = c.head_object(Bucket=BUCKET, Key=f"{prefix}/{case['id']}.{ext}")["ContentLength"]
                    c.delete_object(Bucket=BUCKET, Key=f"{prefix}/{case['id']}.{ext}")
                med = statistics.median(times)
                print(f"{name:7} {enc:5} disk {size // MiB} MiB, data {int(str(case['data'])) // MiB} MiB: "
                      f"{med:.2f} s median of {args.runs} ({size / MiB / med:.0f} MiB/s of disk), object "
                      f"{obj / MiB:.1f} MiB = {obj / size:.4f} of raw, peak RSS {rss // 1024} MiB", flush=True)
            if name == "dense":
                # baseline: boto3's own multipart upload of the same bytes (the LV is the file after pe_start)
                raw = args.workdir / f"dense-{args.dense_mib}.raw"
                if not raw.exists():
                    with open(args.workdir / "volumes" / str(case["id"]), "rb") as f, open(raw, "wb") as g:
                        f.seek(PE_START)
                        while b := f.read(8 * MiB):
                            g.write(b)
                times = []
                for run in range(args.runs):  # a process of its own too, so both pay the interpreter's start
                    code = ("import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1')"
                            ".upload_file(sys.argv[2], sys.argv[3], sys.argv[4])")
                    dt, _ = timed([sys.executable, "-c", code, url, str(raw), BUCKET, f"baseline-{run}"])
                    times.append(dt)
                    c.delete_object(Bucket=BUCKET, Key=f"baseline-{run}")
                med = statistics.median(times)
                print(f"dense   boto3 upload_file of the raw LV (own process): {med:.2f} s median "
                      f"({size / MiB / med:.0f} MiB/s)", flush=True)
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
