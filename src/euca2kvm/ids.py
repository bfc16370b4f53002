# SPDX-License-Identifier: Apache-2.0
"""Names and magic numbers every layer may know: Eucalyptus volume/snapshot ids and the gzip sniff.

Neutral ground: the movers (``export.gzsource``) recognise a snapshot object by these without
knowing about Eucalyptus discovery, and ``eucalyptus.discovery`` uses the same rules to tell
volumes, snapshots and stray temporary files apart.
"""

from __future__ import annotations

import re

# Eucalyptus ids: 8 hex digits (short) or 17 (long), treated as opaque otherwise.
_HEX_ID = r"(?:[0-9a-fA-F]{8}|[0-9a-fA-F]{17})"
ID_RE = re.compile(rf"^(?:vol|volume|snap)-{_HEX_ID}$")
# A snapshot object downloaded from object storage: gzip members, not seekable (see export.gzsource).
SNAP_GZ_RE = re.compile(rf"^snap-{_HEX_ID}\.gz$")
# A temporary file named like an id plus a suffix (an interrupted snapshot's extra PV): not a volume.
STRAY_RE = re.compile(rf"^(?:vol|volume|snap)-{_HEX_ID}[0-9A-Za-z]{{1,16}}$")
# The first two bytes of every gzip member (RFC 1952, ID1 ID2).
GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: str) -> bool:
    """Does the file start with the gzip magic (a snapshot object from object storage)?"""
    try:
        with open(path, "rb") as f:
            return f.read(len(GZIP_MAGIC)) == GZIP_MAGIC
    except OSError:
        return False
