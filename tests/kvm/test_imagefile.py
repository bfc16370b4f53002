# SPDX-License-Identifier: Apache-2.0
"""The image inspector's qemu-img is the one the rest of euca2kvm uses: ``$QEMU_IMG`` if set."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from _env import need_tools
from euca2kvm.errors import ToolError
from euca2kvm.kvm.imagefile import open_image

MiB = 1 << 20
TOOL_TIMEOUT = 60


def test_qemu_img_override_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_tools("qemu-img")
    data = random.Random(7).randbytes(2 * MiB)
    raw = tmp_path / "disk.raw"
    raw.write_bytes(data)
    qcow = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)], check=True,
                   timeout=TOOL_TIMEOUT)
    calls = tmp_path / "calls"
    wrapper = tmp_path / "my-qemu-img"
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> {calls}\nexec {shutil.which("qemu-img")} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("QEMU_IMG", str(wrapper))
    with open_image(str(qcow)) as r:
        assert r.pread(MiB - 100, 300) == data[MiB - 100 : MiB + 200]
    assert calls.read_text().split() == ["info", "convert", "convert"]  # probe, then the two chunks read

    broken = tmp_path / "broken-qemu-img"
    broken.write_text("#!/bin/sh\necho nope >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("QEMU_IMG", str(broken))
    with pytest.raises(ToolError):
        open_image(str(qcow))
