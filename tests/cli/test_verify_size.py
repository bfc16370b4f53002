# SPDX-License-Identifier: Apache-2.0
"""``verify`` of converted images whose disk is not whole 512-byte sectors (qemu rounds the image up)."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from _env import need_tools
from euca2kvm.errors import EXIT_VERIFY
from euca2kvm.export.formats import output_format
from euca2kvm.export.gzsource import export_gz
from euca2kvm.export.pipeline import ExportOptions

MiB = 1 << 20
ODD = 6 * MiB + 12345  # not a multiple of 512: the qcow2 holds 6 MiB + 12800 bytes


def verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "euca2kvm", "verify", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk"])
def test_odd_sized_disk_converted_verifies_and_a_flipped_byte_does_not(tmp_path: Path, fmt: str) -> None:
    need_tools("qemu-img", "qemu-nbd", "qemu-io")
    rng = random.Random("odd")
    data = bytearray(ODD)
    data[: 300_000] = rng.randbytes(300_000)
    data[ODD - 5000 :] = rng.randbytes(5000)  # data up to the last byte, in the partial sector
    snap = tmp_path / "snap-0dd51ze0.gz"
    snap.write_bytes(gzip.compress(bytes(data), compresslevel=1, mtime=0))
    out = tmp_path / "out"
    out.mkdir()
    (out / f"snap-0dd51ze0.{fmt}").write_bytes(rng.randbytes(1 << 16))  # garbage under the final name
    entry, _ = export_gz(str(snap), out, ExportOptions(fmt=output_format(fmt)))
    assert entry["size"] == ODD and entry["digest"]
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(out / entry["output"])],
                                     capture_output=True, text=True, check=True, timeout=60).stdout)
    assert info["virtual-size"] > ODD  # the case at hand: the image is longer than the disk
    p = verify(str(out))
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    # one byte of the disk changed (in the last, partial sector): a mismatch, exit 6
    subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P 0x5a {ODD - 100} 1", str(out / entry["output"])],
                   check=True, capture_output=True, timeout=60)
    p = verify(str(out / "manifest.json"), "--json")
    assert p.returncode == EXIT_VERIFY and "Traceback" not in p.stderr
    assert [r["status"] for r in json.loads(p.stdout)] == ["mismatch"]
