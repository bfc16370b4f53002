# SPDX-License-Identifier: Apache-2.0
"""What the command line needs to know about RBD sources before any is opened: the ``rbd:POOL``
spelling and the Ceph defaults. No ctypes, no librbd: commands that never read a pool do not load them."""

from __future__ import annotations

import re

from ..errors import UsageError

PREFIX = "rbd:"
DEFAULT_CONF = "/etc/ceph/ceph.conf"
DEFAULT_ID = "eucalyptus"  # storage.cephuser's default
# Ceph pool names are free text; these bytes never belong in one and would reach terminals and messages.
_BAD_POOL = re.compile(r"[\x00-\x1f\x7f/@]")


def is_rbd(source: str) -> bool:
    return source.startswith(PREFIX)


def pool_name(source: str) -> str:
    """``rbd:POOL`` -> ``POOL`` (exit 2 for an empty or impossible name)."""
    name = source[len(PREFIX):]
    if not name or _BAD_POOL.search(name):
        raise UsageError(f"--source {source!r}: expected rbd:POOL with a Ceph pool name")
    return name
