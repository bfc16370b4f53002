# SPDX-License-Identifier: Apache-2.0
"""SSH sources against ``ssh host cat FILE > /dev/null``: same sshd, same cipher, same bytes.

    sudo .venv/bin/python bench/bench_ssh.py [--mib 512] [--threads 1,4] [--repeat 3]

Starts the test sshd (tests/sshd.py) on 127.0.0.1, writes a dense file and a sparse one (one
eighth data) in a temporary directory, and prints, per run, seconds and MB/s of:

* ``ssh-cat``: OpenSSH's client reading the dense file with the cipher euca2kvm negotiates;
* ``remote-N``: euca2kvm's RemoteFile reading it in 4 MiB blocks from N threads (what an export's
  workers do), the ratio to ssh-cat (the target is >= 0.9);
* ``sftp-N``: the same through SFTP only (64 KiB requests), as before the reader channel;
* ``sparse-N``: the sparse file read the way the movers read it (its data ranges only): the time
  should be about an eighth of the dense one.

Runs interleave, so a busy machine slows every row alike; each run's ratios are printed as it ends,
then the median of ``--repeat`` with the client's CPU seconds (user + system; ssh-cat's is the
``ssh`` process'), which a loaded machine changes less than the wall time. Dense reads go through
the file's reader channel (remote/stream.py).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import sshd  # noqa: E402
from euca2kvm.remote import files, ssh, stream  # noqa: E402

MiB = 1 << 20
BLOCK = 4 * MiB  # the movers' block size


CPU: dict[str, list[float]] = {}  # CPU seconds of the reading client, per row


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def ssh_cat(server: sshd.Sshd, path: Path, cipher: str) -> float:
    t0, c0 = time.monotonic(), _cpu(resource.RUSAGE_CHILDREN)
    subprocess.run([*server.ssh_argv()[:-1], "-c", cipher, server.ssh_argv()[-1], "cat", str(path)],
                   stdout=subprocess.DEVNULL, check=True, timeout=3600)
    CPU.setdefault("ssh-cat", []).append(_cpu(resource.RUSAGE_CHILDREN) - c0)
    return time.monotonic() - t0


def remote_read(url: str, threads: int, sparse: bool, sftp: bool = False) -> tuple[float, int]:
    """``sftp``: every read through SFTP, as before the reader channel (for comparison)."""
    f = files.open_url(url)
    if sftp:
        f._stream = stream.UNAVAILABLE
    c0 = _cpu(resource.RUSAGE_SELF)
    size = f.size()
    spans = f.data_ranges(0, size) if sparse else [(0, size)]
    blocks = [(o, min(BLOCK, b - o)) for a, b in spans for o in range(a, b, BLOCK)]
    lock = threading.Lock()

    def work() -> None:
        buf = bytearray(BLOCK)
        while True:
            with lock:
                if not blocks:
                    return
                off, n = blocks.pop()
            got = f.pread_into(off, memoryview(buf)[:n])
            assert got == n

    t0 = time.monotonic()
    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.monotonic() - t0
    f.close()
    row = f"{'sftp' if sftp else 'sparse' if sparse else 'remote'}-{threads}"
    CPU.setdefault(row, []).append(_cpu(resource.RUSAGE_SELF) - c0)
    return dt, f.bytes_read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--threads", default="1,4")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    threads = [int(x) for x in a.threads.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-ssh-") as tmp:
        d = Path(tmp)
        server = sshd.start(d / "sshd")
        try:
            dense, sparse = d / "dense", d / "sparse"
            size = a.mib * MiB
            with open(dense, "wb") as fh:
                for _ in range(a.mib):
                    fh.write(os.urandom(MiB))
            with open(sparse, "wb") as fh:
                fh.truncate(size)
                for i in range(0, a.mib, 8):
                    fh.seek(i * MiB)
                    fh.write(os.urandom(MiB))
            ssh.OPTIONS = ssh.Options(known_hosts=str(server.known_hosts), identity=str(server.identity))
            conn = ssh.connect(ssh.parse_url(server.url("/")))
            cipher = str(conn.conn.get_extra_info("send_cipher"))
            rows: dict[str, list[float]] = {}
            for _ in range(a.repeat):
                rows.setdefault("ssh-cat", []).append(ssh_cat(server, dense, cipher))
                for n in threads:
                    rows.setdefault(f"remote-{n}", []).append(remote_read(server.url(str(dense)), n, False)[0])
                    rows.setdefault(f"sftp-{n}", []).append(remote_read(server.url(str(dense)), n, False, True)[0])
                    dt, got = remote_read(server.url(str(sparse)), n, True)
                    assert got <= size // 8 + MiB, got
                    rows.setdefault(f"sparse-{n}", []).append(dt)
                print("run: " + "  ".join(f"{k} x{rows['ssh-cat'][-1] / v[-1]:.2f}" for k, v in rows.items()
                                          if k.startswith(("remote-", "sftp-"))), flush=True)
            base = statistics.median(rows["ssh-cat"])
            print(f"{a.mib} MiB, cipher {cipher}, median of {a.repeat}")
            for name, times in rows.items():
                t = statistics.median(times)
                print(f"{name:10s} {t:7.2f} s {size / t / 1e6:8.1f} MB/s  x{base / t:5.2f} of ssh-cat  "
                      f"client CPU {statistics.median(CPU[name]):5.2f} s")
        finally:
            ssh.close_all()
            server.stop()


if __name__ == "__main__":
    main()
