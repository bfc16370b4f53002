# SPDX-License-Identifier: Apache-2.0
"""bench/bench_datapath.py keeps working: every case of issue 12's table runs at a tiny size and
reports a number for every row, so the benchmark the final measurements depend on never rots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _env import IN_CI, need_root, need_tools

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_datapath.py"
# The smallest sizes that still make every fixture (one 4 MiB lvm2 extent each for the scaled ones).
SIZE = "32M"
VOLUMES = 2
# At this size the run takes ~15 s here (mostly euca2kvm start-ups); 120 s means something hung.
TIMEOUT_S = 120


def test_every_case_reports_its_numbers(tmp_path: Path) -> None:
    need_root()
    need_tools("lvm", "losetup", "qemu-img", "dd")
    # Dropping the whole page cache disturbs everything else on the machine: only on CI as root.
    cold = "drop" if IN_CI else "evict"
    out = tmp_path / "bench.json"
    p = subprocess.run(
        [sys.executable, str(BENCH), "--size", SIZE, "--volumes", str(VOLUMES), "--runs", "1", "--warmup", "0",
         "--cold", cold, "--workdir", "/var/tmp/euca2kvm-bench-smoke",
         "--cases", "dense,qcow2,reads,small,sparse,many,coldread", "--json", str(out)],
        capture_output=True, text=True, timeout=TIMEOUT_S, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    r = json.loads(out.read_text())
    expected = {"dense": 3, "qcow2": 1, "small": 2, "sparse": 1, "many": 1}
    for case, n in expected.items():
        assert all(t > 0 for t in r[case]["median_s"].values()), case
        assert len(r[case]["ratios"]) == n, case
        assert all(len(v) == 1 and v[0] >= 0 for v in r[case]["cpu_s"].values()), case
        # every command's peak RSS was measured (a command's own, not the benchmark's ~70 MiB)
        assert all(0 < kib < 60 * 1024 for k, kib in r[case]["peak_rss_kib"].items() if not k.startswith("euca")), case
    data = r["reads"]["data_bytes"]
    assert data == 32 << 20
    # A verified export reads every data byte of the source at least once, and the count says how often.
    if "source_bytes" in r["reads"]:
        assert r["reads"]["source_bytes"] >= data
        assert r["reads"]["ratios"]
    assert r["coldread"]["rows"]["preadv 4M"]["median_s"] > 0
    assert len(r["coldread"]["rows"]) >= 10
