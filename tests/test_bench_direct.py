# SPDX-License-Identifier: Apache-2.0
"""bench/bench_direct.py keeps working: every variant of its own copies and the tools runs once at a
tiny size, reports a number for each cache state, and leaves no file behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from _env import need_tools

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_direct.py"
# Two 4 MiB blocks: every variant's code path, in ~2 s here; 120 s means something hung.
SIZE = "8M"
TIMEOUT_S = 120


def test_every_variant_reports_and_cleans_up(tmp_path: Path) -> None:
    need_tools("qemu-img", "dd")
    work = tmp_path / "work"
    probe = tmp_path / "probe"
    try:  # the bench writes with O_DIRECT: its work directory must be on a filesystem that takes it
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
    except OSError:
        work = Path("/var/tmp") / f"euca2kvm-bench-direct-smoke-{os.getpid()}"
    p = subprocess.run([sys.executable, str(BENCH), "--size", SIZE, "--runs", "1", "--hash",
                        "--workdir", str(work)], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    rows = [line.split() for line in p.stdout.splitlines() if line.startswith("  cold") or line.startswith("  warm")]
    assert len(rows) == 2 * 14  # 10 own variants and 4 tools, in both cache states
    assert all(float(r[2]) > 0 for r in rows)
    assert list(work.iterdir()) == []  # source and output removed
    work.rmdir()
