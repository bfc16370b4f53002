# SPDX-License-Identifier: Apache-2.0
"""Output formats: file extension and qemu-img creation options per format."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import FormatError, UsageError
from ..units import MiB


@dataclass(frozen=True)
class OutputFormat:
    name: str  # qemu-img format name
    ext: str
    options: dict[str, object] = field(default_factory=dict)
    compress: bool = False  # qemu-img -c


# qemu-img metadata (L1/L2 tables, refcounts, VHDX log) beyond the data: 1% + 16 MiB covers
# qcow2, vmdk, vhdx and vdi with 64 KiB clusters for any disk size with room to spare.
FORMAT_OVERHEAD_RATIO = 0.01
FORMAT_OVERHEAD_FIXED = 16 * MiB

FORMATS = ("raw", "qcow2", "vmdk", "vhdx", "vpc", "vdi")
VMDK_SUBFORMATS = ("monolithicSparse", "streamOptimized")
EXTENSIONS = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vhdx": "vhdx", "vpc": "vhd", "vdi": "vdi"}
# The largest disk each output can hold, in bytes. Measured with ``qemu-img create`` (qemu-img
# 7.2.22) by bisection to the byte where it starts refusing, except raw and vmdk:
MAX_SIZE = {
    # written by euca2kvm itself: a file offset (INT64_MAX); the filesystem's own file size limit
    # shows as an I/O error (EFBIG), exit 5
    "raw": (1 << 63) - 1,
    # 64 KiB clusters (qemu's default, never changed here): the L1 table is limited to 32 MiB, i.e.
    # 4 Mi L2 tables of 8 Ki clusters: 2 PiB. "The image size is too large for file format 'qcow2'"
    "qcow2": 1 << 51,
    # grain and grain-table offsets of a sparse extent are 32-bit sector numbers, so a monolithicSparse
    # or streamOptimized file cannot address past 2 TiB; VMware documents 2 TB - 512 bytes. qemu-img
    # does not check (a 1 EiB image comes out as a 64 KiB file): the limit is enforced here.
    "vmdk": (1 << 41) - 512,
    "vhdx": 64 << 40,  # qemu: "Image size too large; max of 64TB" (VHDX_MAX_IMAGE_SIZE)
    # fixed VHD with force_size: 0xff000000 sectors (VHD_MAX_SECTORS), just under 2040 GiB
    "vpc": 0xFF000000 * 512,
    # 0x1fffff8000000: qemu's VDI_DISK_SIZE_MAX ("Unsupported VDI image size")
    "vdi": 0x1FFFFF8000000,
}


def output_format(name: str, *, compress: bool = False, vmdk_subformat: str | None = None) -> OutputFormat:
    if name not in FORMATS:
        raise UsageError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}")
    if compress and name not in ("qcow2", "vmdk"):
        raise UsageError("--compress applies to qcow2 (and streamOptimized vmdk) only")
    opts: dict[str, object] = {}
    if name == "qcow2":
        # compat 1.1 (qemu >= 1.1) for zero clusters and lazy refcounts; 64 KiB clusters are the default
        opts["compat"] = "1.1"
    elif name == "vmdk":
        sub = vmdk_subformat or ("streamOptimized" if compress else "monolithicSparse")
        if sub not in VMDK_SUBFORMATS:
            raise UsageError(f"--vmdk-subformat must be one of {', '.join(VMDK_SUBFORMATS)}")
        if compress and sub != "streamOptimized":
            raise UsageError("--compress with vmdk needs --vmdk-subformat streamOptimized")
        opts["subformat"] = sub
        opts["adapter_type"] = "lsilogic"
        # streamOptimized is always compressed by qemu-img; -c is not accepted there
        compress = False
    elif name == "vpc":
        # Fixed VHD with the exact disk size (no CHS rounding): what Azure-style uploads require.
        opts["subformat"] = "fixed"
        opts["force_size"] = "on"
    elif name == "vhdx":
        opts["subformat"] = "dynamic"
    elif name == "vdi":
        opts["static"] = "off"
    elif vmdk_subformat:
        raise UsageError("--vmdk-subformat applies to --format vmdk only")
    return OutputFormat(name, EXTENSIONS[name], opts, compress)


def check_size(fmt: OutputFormat, size: int, name: str) -> None:
    """Refuse (exit 3) a disk of ``size`` bytes that ``fmt`` cannot hold, before anything is written."""
    limit = MAX_SIZE[fmt.name]
    if size > limit:
        raise FormatError(f"{name} is a disk of {size} bytes but a {fmt.name} image holds at most {limit} "
                          "bytes; choose another --format")


def output_bytes(fmt: OutputFormat, data: int) -> int:
    """Bytes an image of ``data`` allocated source bytes takes at most: what the export's space
    preflight and the planner's estimate both use (compression may not help, so it counts none)."""
    if fmt.name == "raw" and not fmt.compress:
        return data
    return int(data * (1 + FORMAT_OVERHEAD_RATIO)) + FORMAT_OVERHEAD_FIXED
