# SPDX-License-Identifier: Apache-2.0
"""``--source rbd:POOL``: the images of Ceph pools, each with its facts and a way to open it.

What becomes a volume (names like ``vol-XXXXXXXX``/``snap-XXXXXXXX``; ``del<8>-…`` images, renamed by
Eucalyptus when deleted while clones still read through them, are not volumes) is decided by the
caller, which knows Eucalyptus' id rules. Nothing here writes: listing and facts use read-only opens.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .image import Cluster, ImageFacts, Pool, RbdImage

# Eucalyptus renames an image it cannot remove (it still has clones) to "del" + 8 characters + "-" + name.
DELETED_RE = re.compile(r"^del[0-9A-Za-z]{8}-")
# An image's facts are round trips, not work (open, parent chain, snapshots, watchers: 10-20 ms each
# on this machine's cluster); a pool of hundreds of volumes is read this many images at a time.
FACT_THREADS = 8


@dataclass
class RbdRef:
    """One image of a pool: its facts, and a factory for its block source (``Volume.blocks_factory``)."""

    pool: Pool
    image: str
    facts: ImageFacts

    @property
    def spec(self) -> str:
        return f"rbd:{self.pool.name}/{self.image}"

    @property
    def deleted(self) -> bool:
        return bool(DELETED_RE.match(self.image))

    def __call__(self) -> RbdImage:
        """Opened right before reading: a watcher the scan did not report is refused (exit 4)."""
        return self.pool.open(self.image, self.facts.watchers)

    def chain_text(self) -> list[str]:
        """The parent chain, nearest first: ``pool/image@snap (overlap N bytes)``."""
        return [f"{p.pool}/{p.image}@{p.snap} (overlap {p.overlap} bytes)" for p in self.facts.chain]


def pool_images(cluster: Cluster, pool: str) -> list[RbdRef]:
    """Every image of ``pool`` with its facts, FACT_THREADS images at a time (librbd is thread-safe;
    ctypes drops the GIL while it waits), in the pool's name order."""
    p = cluster.pool(pool)
    names = p.names()
    if len(names) < 2:
        return [RbdRef(p, name, p.facts(name)) for name in names]
    with ThreadPoolExecutor(min(FACT_THREADS, len(names)), thread_name_prefix="rbd-facts") as ex:
        facts = list(ex.map(p.facts, names))
    return [RbdRef(p, name, f) for name, f in zip(names, facts, strict=True)]
