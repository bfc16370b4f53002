# SPDX-License-Identifier: Apache-2.0
"""Read-only LVM2 reader: on-disk format -> model -> extent map."""

from . import segtypes as segtypes  # registers raid1/mirror/raid0/thin/snapshot resolvers and refusals
from .device import Device
from .extents import Extent, ExtentMap, Kind
from .reader import ExtentReader
from .scan import ScanResult, VolumeGroup, scan

__all__ = ["Device", "Extent", "ExtentMap", "ExtentReader", "Kind", "ScanResult", "VolumeGroup", "scan"]
