# SPDX-License-Identifier: Apache-2.0
"""Warm migration, first pass: export a volume while its instance runs (``export --warm``).

The source is only read, as always; what changes is what is accepted while it is read. A guest
writing the volume moves its container file's times, so the final "source unchanged" check of
:func:`.pipeline.check_unchanged` ignores them; the file's size and inode and the VG metadata
(seqno, checksum, LV uuid: :mod:`.identity`) must still be as before, so a container resized or
whose LVM metadata changes during the pass fails it (exit 5), nothing published.

The image is torn (blocks read at different moments), so its entry records ``"consistent":
false``, the pass's start and end (UTC), and the name and sha256 of ``<image>.blocks``
(:mod:`.sidecar`): the digest of every 4 MiB block as written. A later pass (``--warm`` again,
or ``--sync`` once the instance is stopped, :mod:`.sync`) re-reads the source, compares, and
rewrites only the blocks that differ.

Raw images get the digests from the block mover as it writes them (``copy_blocks(on_block=)``).
Converted images (qcow2...) get them from the output, digested through qemu-nbd after the
conversion was verified: one more read of the output, not of the source.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..outdir import OutDir
from . import manifest, sidecar
from .digest import Algorithm

if TYPE_CHECKING:
    from .pipeline import ExportOptions


def utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class WarmPass:
    """The per-block digests of one warm pass and the fields its manifest entry gets."""

    def __init__(self, algorithm: Algorithm) -> None:
        self.algorithm = algorithm
        self.digests: list[bytes] = []
        self.started = time.time()

    def add(self, index: int, digest: bytes) -> None:
        if index != len(self.digests):
            raise AssertionError(f"block {index} digested out of order")
        self.digests.append(digest)

    def digest_output(self, path: Path, opts: ExportOptions, size: int) -> None:
        """The block digests of a converted image (through qemu-nbd), as the sidecar records them."""
        from .copy import copy_blocks
        from .imagedigest import NbdSource, qemu_nbd
        from .nbdclient import NbdClient

        self.digests = []
        with qemu_nbd(str(path), opts.fmt.name, opts.workers + 1) as (sock, status):
            readers = [NbdClient(sock) for _ in range(opts.workers)]
            try:
                copy_blocks(NbdSource(status, readers, str(path), size), None, workers=opts.workers,
                            algorithm=self.algorithm, on_block=self.add)
            finally:
                for c in readers:
                    c.close()

    def commit(self, od: OutDir, image_name: str, entry: dict[str, Any]) -> Callable[[], None]:
        """What publishing the image runs under the directory lock: the sidecar, then the entry."""
        ended = time.time()
        car = sidecar.Sidecar(self.algorithm, entry["size"], self.digests)
        if entry.get("digest") is not None and car.folded() != entry["digest"]:
            raise AssertionError("the sidecar's digests do not fold to the export's digest")

        def run() -> None:
            entry["blocks"] = sidecar.write(od, sidecar.name_for(image_name), car)
            entry["consistent"] = False
            entry["warm"] = {"started_at": utc(self.started), "ended_at": utc(ended),
                             "seconds": round(ended - self.started, 3), "passes": 1}
            entry.pop("sync_in_progress", None)
            manifest.record(od.path, entry)

        return run
