# SPDX-License-Identifier: Apache-2.0
"""Images that name other files are refused, and the files they name are never opened.

Each hostile image names a FIFO trap (see fifotrap.py): a qcow2 backing file, a qcow2 external
data file, the FLAT extent of a vmdk text descriptor, the descriptor of a vmdk sparse header with
capacity 0 (which qemu opens as a descriptor file), an extra extent or a parent in a sparse
vmdk's embedded descriptor. ``image_digest`` raises RefusedImage, ``verify`` reports the entry as
refused and exits 3, and a re-run of ``export`` does not reuse such an output: it exports again.
"""

from __future__ import annotations

import json
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from _env import need_tools
from euca2kvm.errors import EXIT_FORMAT, EXIT_OK
from euca2kvm.export import qemu_img
from euca2kvm.export.imagedigest import image_digest
from euca2kvm.export.imagerefs import MAX_DESCRIPTOR, RefusedImage, check_info
from security.fifotrap import FifoTrap

MiB = 1 << 20
VOL = "vol-5ec0f001"
SIZE = 8 * MiB
QEMU_TIMEOUT = 60  # seconds for qemu-img create on an 8 MiB image
DIGEST = "blkblake3-4m:" + "00" * 32  # any well-formed digest: a refused image is never hashed


def _qemu(*argv: str) -> None:
    subprocess.run(argv, check=True, timeout=QEMU_TIMEOUT, stdin=subprocess.DEVNULL, capture_output=True)


def _planted_then_trapped(trap: Path, create: Callable[[], None]) -> FifoTrap:
    """Create the image while ``trap`` is a regular file (qemu-img create may read it), then make it a trap."""
    trap.write_bytes(bytes(SIZE))
    create()
    trap.unlink()
    return FifoTrap(trap)


def qcow2_backing(img: Path, trap: Path) -> FifoTrap:
    return _planted_then_trapped(trap, lambda: _qemu("qemu-img", "create", "-f", "qcow2", "-b", str(trap),
                                                     "-F", "raw", str(img), str(SIZE)))


def qcow2_data_file(img: Path, trap: Path) -> FifoTrap:
    return _planted_then_trapped(trap, lambda: _qemu("qemu-img", "create", "-f", "qcow2", "-o",
                                                     f"data_file={trap}", str(img), str(SIZE)))


def vmdk_flat(img: Path, trap: Path) -> FifoTrap:
    img.write_text(f'# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\n'
                   f'createType="monolithicFlat"\n\n# Extent description\nRW {SIZE // 512} FLAT "{trap}" 0\n\n'
                   'ddb.adapterType = "lsilogic"\n')
    return FifoTrap(trap)


def _sparse_vmdk(img: Path, edit: Callable[[str], str], capacity_zero: bool = False) -> None:
    """A monolithicSparse vmdk made by qemu-img whose embedded descriptor is rewritten by ``edit``."""
    _qemu("qemu-img", "create", "-f", "vmdk", str(img), str(SIZE))
    with open(img, "r+b") as f:
        head = f.read(512)
        desc_offset, desc_size = struct.unpack_from("<QQ", head, 28)
        f.seek(desc_offset * 512)
        region = f.read(desc_size * 512)
        text = edit(region.rstrip(b"\0").decode()).encode()
        assert len(text) <= len(region)
        f.seek(desc_offset * 512)
        f.write(text.ljust(len(region), b"\0"))
        if capacity_zero:
            f.seek(12)
            f.write(struct.pack("<Q", 0))


def _extent_line(text: str, new: str) -> str:
    return "\n".join(new if ln.startswith("RW ") else ln for ln in text.split("\n"))


def vmdk_capacity0(img: Path, trap: Path) -> FifoTrap:
    def edit(text: str) -> str:  # a descriptor qemu follows: the type must be one with FLAT extents
        text = text.replace('createType="monolithicSparse"', 'createType="monolithicFlat"')
        return _extent_line(text, f'RW {SIZE // 512} FLAT "{trap}" 0')

    _sparse_vmdk(img, edit, capacity_zero=True)
    return FifoTrap(trap)


def vmdk_extra_extent(img: Path, trap: Path) -> FifoTrap:
    _sparse_vmdk(img, lambda t: t.replace("# The Disk Data Base", f'RW 2048 FLAT "{trap}" 0\n# The Disk Data Base'))
    return FifoTrap(trap)


def vmdk_parent(img: Path, trap: Path) -> FifoTrap:
    _sparse_vmdk(img, lambda t: t.replace("parentCID=ffffffff", f'parentCID=1234abcd\nparentFileNameHint="{trap}"'))
    return FifoTrap(trap)


HOSTILE = {  # name: (builder, format, extension)
    "qcow2-backing": (qcow2_backing, "qcow2", "qcow2"),
    "qcow2-data-file": (qcow2_data_file, "qcow2", "qcow2"),
    "vmdk-flat-extent": (vmdk_flat, "vmdk", "vmdk"),
    "vmdk-sparse-capacity-0": (vmdk_capacity0, "vmdk", "vmdk"),
    "vmdk-extra-extent": (vmdk_extra_extent, "vmdk", "vmdk"),
    "vmdk-parent": (vmdk_parent, "vmdk", "vmdk"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_image_digest_refuses_and_never_opens_the_named_file(tmp_path: Path, case: str) -> None:
    need_tools("qemu-img", "qemu-nbd")
    build, fmt, ext = HOSTILE[case]
    img = tmp_path / f"hostile.{ext}"
    trap = build(img, tmp_path / "elsewhere.fifo")
    try:
        for asked in (fmt, None):  # the manifest's format, and probing
            with pytest.raises(RefusedImage):
                image_digest(str(img), asked)
    finally:
        assert not trap.close(), f"{case}: the file the image names was opened"


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_verify_reports_refused_and_exits_3(tmp_path: Path, case: str, cli: Any) -> None:
    need_tools("qemu-img", "qemu-nbd")
    build, fmt, ext = HOSTILE[case]
    out = tmp_path / "out"
    out.mkdir()
    trap = build(out / f"{VOL}.{ext}", tmp_path / "outside.fifo")
    entry = {"id": VOL, "output": f"{VOL}.{ext}", "format": fmt, "digest": DIGEST, "size": SIZE}
    (out / "manifest.json").write_text(json.dumps({"format": "euca2kvm-manifest", "version": 1, "volumes": [entry]}))
    try:
        p = cli("verify", str(out), "--json", check=EXIT_FORMAT, timeout=120)
        assert [r["status"] for r in json.loads(p.stdout)] == ["refused"]
    finally:
        assert not trap.close(), f"{case}: the file the image names was opened"


@pytest.mark.parametrize("case", ["qcow2-backing", "qcow2-data-file", "vmdk-flat-extent", "vmdk-sparse-capacity-0"])
def test_resume_exports_again_instead_of_reusing(tmp_path: Path, case: str, cli: Any, volume: Any) -> None:
    need_tools("qemu-img", "qemu-nbd")
    build, fmt, ext = HOSTILE[case]
    src = tmp_path / "vols"
    src.mkdir()
    volume(src, VOL, SIZE // MiB)
    out = tmp_path / "out"
    args = ["export", VOL, "--source", str(src), "-o", str(out), "--format", fmt, "--workers", "1", "--json"]
    cli(*args)
    recorded = json.loads((out / "manifest.json").read_text())["volumes"][0]
    final = out / f"{VOL}.{ext}"
    final.unlink()
    trap = build(final, tmp_path / "outside.fifo")
    try:
        events = [json.loads(ln)["event"] for ln in cli(*args).stdout.splitlines()]
        assert "skipped" not in events and "done" in events
    finally:
        assert not trap.close(), f"{case}: the file the image names was opened"
    meta = qemu_img.info(str(final), fmt=fmt)
    check_info(meta, str(final), fmt)  # a standalone image again
    assert json.loads((out / "manifest.json").read_text())["volumes"][0]["digest"] == recorded["digest"]
    cli("verify", str(out), check=EXIT_OK)


def test_qemu_written_single_file_images_are_accepted(tmp_path: Path) -> None:
    """What export writes (sparse and stream-optimized vmdk, qcow2) passes both checks and digests."""
    need_tools("qemu-img", "qemu-nbd")
    raw = tmp_path / "src.raw"
    raw.write_bytes(bytes(range(256)) * (SIZE // 256))
    want = image_digest(str(raw), "raw").digest
    for fmt, opts in (("vmdk", "subformat=monolithicSparse"), ("vmdk", "subformat=streamOptimized"),
                      ("qcow2", "compat=1.1")):
        img = tmp_path / f"ok-{opts.split('=')[1]}.{fmt}"
        _qemu("qemu-img", "convert", "-f", "raw", "-O", fmt, "-o", opts, str(raw), str(img))
        assert image_digest(str(img), fmt).digest == want


def test_descriptor_is_read_bounded(tmp_path: Path) -> None:
    """A 'descriptor' far larger than qemu would parse: only its first MAX_DESCRIPTOR bytes count."""
    img = tmp_path / "big.vmdk"
    with open(img, "wb") as f:
        f.write(b"# Disk DescriptorFile\nversion=1\n")
        f.truncate(MAX_DESCRIPTOR + 4 * MiB)
        f.seek(MAX_DESCRIPTOR + MiB)
        f.write(b'\nRW 2048 FLAT "/etc/shadow" 0\n')  # beyond the window: qemu never sees it either
    from euca2kvm.export.imagerefs import refuse_references

    refuse_references(str(img), "vmdk")  # nothing within the window names a file
    with open(img, "r+b") as f:
        f.seek(100)
        f.write(b'\nRW 2048 FLAT "/etc/shadow" 0\n')
    with pytest.raises(RefusedImage, match="shadow"):
        refuse_references(str(img), "vmdk")


@pytest.mark.parametrize("meta", [
    {"format": "qcow2", "virtual-size": SIZE},  # qemu says qcow2, the manifest vmdk
    {"format": "vmdk", "backing-filename": "/etc/shadow"},
    {"format": "vmdk", "full-backing-filename": "/etc/shadow"},
    {"format": "vmdk", "format-specific": {"type": "vmdk", "data": {"extents": [{"filename": "/etc/shadow"}]}}},
    {"format": "vmdk", "format-specific": {"type": "vmdk", "data": {"extents": [{"filename": "/x/img.vmdk"},
                                                                                  {"filename": "/etc/shadow"}]}}},
    {"format": "vmdk", "format-specific": {"type": "vmdk", "data": {"extents": "?"}}},
    {"format": "vmdk", "format-specific": {"type": "qcow2", "data": {"data-file": "/etc/shadow"}}},
])
def test_info_check_refuses_anything_beyond_the_image(meta: dict[str, Any]) -> None:
    with pytest.raises(RefusedImage):
        check_info(meta, "/x/img.vmdk", "vmdk")


def test_info_check_accepts_the_image_itself() -> None:
    check_info({"format": "vmdk", "format-specific": {"type": "vmdk", "data": {
        "extents": [{"filename": "/x/img.vmdk", "format": ""}]}}}, "/x/img.vmdk", "vmdk")
    check_info({"format": "qcow2", "format-specific": {"type": "qcow2", "data": {"compat": "1.1"}}},
               "/x/img.qcow2", "qcow2")


@pytest.mark.parametrize("line", [
    b'RW +2048 FLAT "{trap}" 0',  # sscanf takes a sign
    b'\x0b  rw 2048 flat "{trap}" 0',  # any whitespace, any case
    b'RDONLY 2048 VMFS "{trap}"',
    b'RW 2048 ZERO "{trap}"',  # a name on a ZERO extent is still a name
    b'ddb.comment = "x" parentFileNameHint="{trap}"',  # qemu finds the parent hint anywhere
])
def test_descriptor_spellings_qemu_accepts_are_refused(tmp_path: Path, line: bytes) -> None:
    need_tools("qemu-img")
    trap_path = tmp_path / "t.fifo"
    img = tmp_path / "d.vmdk"
    img.write_bytes(b'# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
                    + line.replace(b"{trap}", str(trap_path).encode()) + b"\n")
    trap = FifoTrap(trap_path)
    try:
        with pytest.raises(RefusedImage):
            image_digest(str(img), "vmdk")
    finally:
        assert not trap.close()
