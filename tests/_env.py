# SPDX-License-Identifier: Apache-2.0
"""Environment requirements for tests.

Tests that need root, loop devices, lvm2, qemu or PostgreSQL may skip on a laptop, but must
fail, not skip, when CI=true: a green CI then proves they ran.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip locally, fail in CI."""
    if IN_CI:
        pytest.fail(f"CI=true but requirement missing: {reason}", pytrace=False)
    pytest.skip(reason)


def need_tools(*tools: str) -> None:
    for t in tools:
        if shutil.which(t) is None:
            missing(f"{t} not installed")


def need_root() -> None:
    if os.geteuid() != 0:
        missing("needs root (loop devices)")
    if not os.path.exists("/dev/loop-control"):
        missing("no /dev/loop-control")
