# SPDX-License-Identifier: Apache-2.0
"""qemu-img wrappers: real qemu-img for behaviour, fake binaries for error paths."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from tests._env import need_tools

from euca2kvm.errors import ToolError
from euca2kvm.export import qemu_img

MiB = 1 << 20


@pytest.fixture
def src(tmp_path: Path) -> tuple[Path, bytes]:
    need_tools("qemu-img")
    data = random.Random(5).randbytes(3 * MiB)
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    return path, data


def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    exe = tmp_path / "fake-qemu-img"
    exe.write_text("#!/bin/sh\n" + script + "\n")
    exe.chmod(0o755)
    monkeypatch.setenv("QEMU_IMG", str(exe))


def test_version(src: tuple[Path, bytes]) -> None:
    major, minor, micro = qemu_img.version()
    assert (major, minor) >= (2, 9)  # raw offset/size options


def test_version_of_an_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake(tmp_path, monkeypatch, 'echo "qemu-img version 9.1.0 (Debian)"')
    assert qemu_img.version() == (9, 1, 0)
    (tmp_path / "other").mkdir()
    fake(tmp_path / "other", monkeypatch, "echo nonsense")  # another path: version() caches per binary
    with pytest.raises(ToolError, match="no version"):
        qemu_img.version()


@pytest.mark.parametrize(("fmt", "options", "compress"), [
    ("qcow2", {"cluster_size": 65536, "lazy_refcounts": False}, False),
    ("qcow2", {}, True),
    ("vmdk", {"subformat": "streamOptimized"}, True),
    ("vpc", {"subformat": "dynamic", "force_size": True}, False),
])
def test_convert_compare_info_map_measure(src: tuple[Path, bytes], tmp_path: Path, fmt: str,
                                          options: dict[str, object], compress: bool) -> None:
    path, data = src
    sparse = tmp_path / "sparse.raw"
    with sparse.open("wb") as f:  # a hole in the middle
        f.write(data[:MiB])
        f.seek(2 * MiB)
        f.write(data[2 * MiB :])
    out = tmp_path / f"out.{fmt}"
    seen: list[float] = []
    qemu_img.convert(str(sparse), str(out), fmt, options, compress=compress, progress_cb=seen.append)
    assert seen and seen[-1] == 100.0 and seen == sorted(seen)
    assert qemu_img.compare(str(sparse), str(out), fmt_a="raw", fmt_b=fmt)
    assert not qemu_img.compare(str(path), str(out), fmt_a="raw", fmt_b=fmt)
    info = qemu_img.info(str(out), fmt=fmt)
    assert (info["format"], info["virtual-size"]) == (fmt, 3 * MiB)
    extents = qemu_img.map(str(out), fmt=fmt)
    assert sum(e["length"] for e in extents) == 3 * MiB
    with pytest.raises(ToolError):  # more output than the caller accepts
        qemu_img.map(str(out), fmt=fmt, max_stdout=16)
    if fmt == "qcow2":
        middle = [e for e in extents if e["start"] < 2 * MiB and e["start"] + e["length"] > MiB]
        assert middle and not any(e["data"] for e in middle)
    need = qemu_img.measure(str(sparse), "qcow2", src_fmt="raw")
    assert need["required"] < need["fully-allocated"]


def test_compare_strict(src: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = src
    copy = tmp_path / "copy.raw"
    copy.write_bytes(data)
    assert qemu_img.compare(str(path), str(copy), strict=True, fmt_a="raw", fmt_b="raw")
    copy.write_bytes(data + bytes(512))  # extra zeros: equal unless strict
    assert qemu_img.compare(str(path), str(copy), fmt_a="raw", fmt_b="raw")
    assert not qemu_img.compare(str(path), str(copy), strict=True, fmt_a="raw", fmt_b="raw")


def test_compare_error_is_a_tool_error(src: tuple[Path, bytes], tmp_path: Path) -> None:
    path, _ = src
    with pytest.raises(ToolError, match="error opening an image.*No such file"):
        qemu_img.compare(str(path), str(tmp_path / "missing.raw"))


def test_convert_failure_carries_stderr(src: tuple[Path, bytes], tmp_path: Path) -> None:
    path, _ = src
    with pytest.raises(ToolError, match="Unknown file format 'nope'"):
        qemu_img.convert(str(path), str(tmp_path / "x"), "nope")
    with pytest.raises(ToolError, match="multiple of 512"):
        spec = {"driver": "raw", "size": 1000, "file": {"driver": "file", "filename": str(path)}}
        qemu_img.convert("json:" + json.dumps(spec), str(tmp_path / "y"), "raw")


def test_options_escaping(src: tuple[Path, bytes], tmp_path: Path) -> None:
    path, _ = src
    out = tmp_path / "o.vmdk"
    qemu_img.convert(str(path), str(out), "vmdk", {"subformat": "monolithicSparse",
                                                   "adapter_type": "lsilogic", "hwversion": "6"})
    assert qemu_img.info(str(out))["format-specific"]["data"]["create-type"] == "monolithicSparse"
    assert qemu_img._options({"a": "x,y", "b": True, "c": 3}) == "a=x,,y,b=on,c=3"


def test_missing_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QEMU_IMG", "/nonexistent/qemu-img")
    with pytest.raises(ToolError, match="cannot run /nonexistent/qemu-img"):
        qemu_img.info("/x")


def test_timeouts_kill_the_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake(tmp_path, monkeypatch, "echo 'about to hang' >&2; exec sleep 30")
    t0 = time.monotonic()
    with pytest.raises(ToolError, match="made no progress for 0.5 s: about to hang"):
        qemu_img.convert("a", "b", "raw", stall_timeout=0.5)
    with pytest.raises(ToolError, match="timed out after 0.5 s"):
        qemu_img.compare("a", "b", timeout=0.5, stall_timeout=None)
    assert time.monotonic() - t0 < 5


def test_progress_keeps_a_slow_convert_alive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake(tmp_path, monkeypatch, r'for p in 0 25 50 75 100; do printf "    (%s.00/100%%)\r" $p; sleep 0.2; done')
    seen: list[float] = []
    qemu_img.convert("a", "b", "raw", progress_cb=seen.append, stall_timeout=0.6)
    assert seen == [0.0, 25.0, 50.0, 75.0, 100.0]


def test_bad_json_and_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake(tmp_path, monkeypatch, "echo '{broken'")
    with pytest.raises(ToolError, match="invalid JSON"):
        qemu_img.info("x")
    fake(tmp_path, monkeypatch, "echo '[]'")
    with pytest.raises(ToolError, match="unexpected result"):
        qemu_img.info("x")
    assert qemu_img.map("x") == []
    fake(tmp_path, monkeypatch, "echo 'read failed' >&2; exit 4")
    with pytest.raises(ToolError, match="error reading an image.*read failed"):
        qemu_img.compare("a", "b")
    fake(tmp_path, monkeypatch, "exit 1")
    assert qemu_img.compare("a", "b") is False
