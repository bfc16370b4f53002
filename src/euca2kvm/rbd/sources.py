# SPDX-License-Identifier: Apache-2.0
"""``--source rbd:POOL``: the images of Ceph pools, each with its facts and a way to open it.

What becomes a volume (names like ``vol-XXXXXXXX``/``snap-XXXXXXXX``; ``del<8>-…`` images, renamed by
Eucalyptus when deleted while clones still read through them, are not volumes) is decided by the
caller, which knows Eucalyptus' id rules. Nothing here writes: listing and facts use read-only opens.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .image import Cluster, ImageFacts, Pool, RbdImage, _Handle

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
    handle: _Handle | None = field(default=None, repr=False, compare=False)  # open since the facts were read

    @property
    def spec(self) -> str:
        return f"rbd:{self.pool.name}/{self.image}"

    @property
    def deleted(self) -> bool:
        return bool(DELETED_RE.match(self.image))

    def __call__(self) -> RbdImage:
        """Opened right before reading (the scan's handle, once): a watcher the scan did not report
        is refused (exit 4)."""
        handle, self.handle = self.handle, None
        return self.pool.open(self.image, self.facts.watchers, handle)

    def chain_text(self) -> list[str]:
        """The parent chain, nearest first: ``pool/image@snap (overlap N bytes)``."""
        return [f"{p.pool}/{p.image}@{p.snap} (overlap {p.overlap} bytes)" for p in self.facts.chain]


def pool_images(cluster: Cluster, pool: str) -> list[RbdRef]:
    """Every image of ``pool`` with its facts (see :func:`images`)."""
    return images(cluster, [pool])


def images(cluster: Cluster, pools: list[str], only: Collection[str] | None = None) -> list[RbdRef]:
    """The images of ``pools`` with their facts, pool by pool in each pool's name order, FACT_THREADS
    images at a time (librbd is thread-safe; ctypes drops the GIL while it waits). Each pool is listed once.

    ``only``: the names a command was given (``export ID...``): facts are read for those images alone
    (the others cost nothing but the listing), and each keeps its read-only handle for its export.
    When one of the names is in none of the pools, every image's facts are read, as without ``only``
    (an unknown id is then reported with the pool's close matches)."""
    listed = [(p, p.names()) for p in (cluster.pool(name) for name in dict.fromkeys(pools))]
    named = set(only or ())
    keep = bool(named) and named <= {n for _, names in listed for n in names}
    wanted = [(p, n) for p, names in listed for n in names if not keep or n in named]

    def read(item: tuple[Pool, str]) -> RbdRef:
        p, name = item
        if keep:
            h, f = p.described(name)
            return RbdRef(p, name, f, h)
        return RbdRef(p, name, p.facts(name))

    if len(wanted) < 2:
        return [read(w) for w in wanted]
    with ThreadPoolExecutor(min(FACT_THREADS, len(wanted)), thread_name_prefix="rbd-facts") as ex:
        return list(ex.map(read, wanted))
