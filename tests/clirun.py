# SPDX-License-Identifier: Apache-2.0
"""Run ``python -m euca2kvm`` as a user would, for every CLI test: in a subprocess with a timeout,
asserting that no traceback ever reaches stderr and, unless ``check`` is None, the exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

CLI_TIMEOUT_S = 300  # seconds; the slowest single command of the suite (a converted export) takes well under


def euca2kvm(*args: str, check: int | None = 0, timeout: float = CLI_TIMEOUT_S,
             env: Mapping[str, str] | None = None, cwd: Path | str | None = None) -> subprocess.CompletedProcess[str]:
    """The finished command; ``env`` adds to (and overrides) this process's environment."""
    p = subprocess.run([sys.executable, "-m", "euca2kvm", *args], capture_output=True, text=True, timeout=timeout,
                       env=None if env is None else {**os.environ, **env}, cwd=cwd)
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    return p
