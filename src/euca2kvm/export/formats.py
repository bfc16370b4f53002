# SPDX-License-Identifier: Apache-2.0
"""Output formats: file extension and qemu-img creation options per format."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError


@dataclass(frozen=True)
class OutputFormat:
    name: str  # qemu-img format name
    ext: str
    options: dict[str, object] = field(default_factory=dict)
    compress: bool = False  # qemu-img -c


FORMATS = ("raw", "qcow2", "vmdk", "vhdx", "vpc", "vdi")
VMDK_SUBFORMATS = ("monolithicSparse", "streamOptimized")
EXTENSIONS = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vhdx": "vhdx", "vpc": "vhd", "vdi": "vdi"}


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
