# SPDX-License-Identifier: Apache-2.0
"""Shared session fixtures: real-lvm2 container fixtures and third-party LVM2 images."""

from __future__ import annotations

import gc
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _env import need_root, need_tools

DATA = Path(__file__).resolve().parent / "data"
# qemu-img converts these 8-16 MiB images in well under a second; 60 s means it hung.
QEMU_IMG_TIMEOUT_S = 60
MiB = 1 << 20

# Ground truth from tests/data/third-party/PROVENANCE.md (real lvm2 PVs made by log2timeline/dfvfs).
THIRD_PARTY: dict[str, dict[str, Any]] = {
    "lvm": {
        "qcow2": DATA / "third-party/dfvfs/lvm.qcow2",
        "raw_size": 8 * MiB,
        "raw_sha256": "a652bd8e068d83eb74647afbe542cba40a25479a18a91c637fab2c7858f8da20",
        "lvm2_version": "2.03.06", "vg": "test_volume_group", "seqno": 2,
        "lvs": {"test_logical_volume": {
            "size": 4 * MiB, "sha256": "c99d6a59786b5b4fc3b3bde4a769f9c622da883460f1df54f1157d0c7af94209"}},
    },
    "lvmtest": {
        "qcow2": DATA / "third-party/dfvfs/lvmtest.qcow2",
        "raw_size": 16 * MiB,
        "raw_sha256": "1028bec589fb8bdce75271522a028c6bb805610301593fbc86ff123dd0deb969",
        "lvm2_version": "2.02.116", "vg": "vg_test", "seqno": 3,
        "lvs": {
            "lv_test1": {"size": 8 * MiB,
                         "sha256": "c1ac1de79f706fff71bfdb8a4ba58a8317c83abbb2065e54feddd2549875332b"},
            "lv_test2": {"size": 4 * MiB,
                         "sha256": "1460e32323390412431d0ccf1a90a0f949e3be72454faedabc204c1f470b0dae"},
        },
    },
}


@pytest.fixture(scope="session")
def lvm_fixtures() -> tuple[Path, dict[str, Any]]:
    """(fixture dir, truth dict) built by tests/lvmfix.py with the real lvm2, cached across runs."""
    need_root()
    need_tools("lvm", "pvck", "losetup")
    import lvmfix

    return lvmfix.cached()


@pytest.fixture(scope="session")
def third_party_pvs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """name -> THIRD_PARTY entry plus "raw": Path of the image converted to a raw PV file."""
    need_tools("qemu-img")
    out = tmp_path_factory.mktemp("third-party")
    res: dict[str, dict[str, Any]] = {}
    for name, info in THIRD_PARTY.items():
        raw = out / f"{name}.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(info["qcow2"]), str(raw)],
                       check=True, capture_output=True, timeout=QEMU_IMG_TIMEOUT_S)
        res[name] = {**info, "raw": raw}
    return res


def _held_fixture_files() -> set[str]:
    """Files under the shared fixture directories this process holds open."""
    import lvmfix

    roots = (str(os.environ.get(lvmfix.CACHE_ENV) or lvmfix.DEFAULT_CACHE) + "/",)
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(roots):
            held.add(target)
    return held


@pytest.fixture(autouse=True)
def _no_source_left_open(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that leaves a shared fixture file open makes the in-use checks of every later test (which
    run on this machine) see this process holding it: each test must close the sources it opens."""
    before = _held_fixture_files()
    yield
    gc.collect()
    leaked = _held_fixture_files() - before
    if leaked:
        pytest.fail(f"{request.node.nodeid} left fixture files open: {sorted(leaked)}", pytrace=False)
