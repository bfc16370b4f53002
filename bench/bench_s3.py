#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""S3 upload benchmark: ``export -o s3://`` (gzip and raw encodings) against a plain boto3 upload of
the same bytes, same run, into a local moto server (127.0.0.1 only).

    python bench/bench_s3.py [--runs 3] [--workdir /var/tmp/euca2kvm-bench] [--cases dense,sparse]

Uses the containers of ``bench/bench_export.py`` (dense: 800 MiB of random data; sparse: an 8 GiB
LV with 256 MiB of data). Prints, per case and encoding, the median wall time, the disk's size
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
from bench_export import build  # noqa: E402

MiB = 1 << 20
BUCKET = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    return dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/euca2kvm-bench"))
    ap.add_argument("--cases", default="dense,sparse")
    args = ap.parse_args()
    cases = build(args.workdir)
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
            if name == "dense" and case["offset"] == 1 << 20:
                # baseline: boto3's own multipart upload of the same bytes (the LV is the file after 1 MiB)
                raw = args.workdir / "dense-lv.raw"
                if not raw.exists():
                    with open(str(case["file"]), "rb") as f, open(raw, "wb") as g:
                        f.seek(int(str(case["offset"])))
                        while b := f.read(8 * MiB):
                            g.write(b)
                times = []
                for run in range(args.runs):
                    t0 = time.perf_counter()
                    c.upload_file(str(raw), BUCKET, f"baseline-{run}")
                    times.append(time.perf_counter() - t0)
                    c.delete_object(Bucket=BUCKET, Key=f"baseline-{run}")
                med = statistics.median(times)
                print(f"dense   boto3 upload_file of the raw LV: {med:.2f} s median ({size / MiB / med:.0f} MiB/s)",
                      flush=True)
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
