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

import calendar
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import safefs
from ..errors import IOFailure
from ..outdir import OutDir
from . import manifest, sidecar
from .digest import DIGEST_BLOCK, Algorithm, block_count

if TYPE_CHECKING:
    from .pipeline import ExportOptions


def image_stamp(od: OutDir, out: Path) -> dict[str, int]:
    """The published image's :func:`.safefs.stamp` (the name in OUTDIR, never through a link)."""
    try:
        return safefs.stamp(os.stat(out.name, dir_fd=od.fd, follow_symlinks=False))
    except OSError as e:
        raise IOFailure(f"cannot stat {out}: {e.strerror}") from e


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

    def fields(self, ended: float) -> dict[str, Any]:
        """What a first warm pass's entry records besides the export's fields (not its sidecar)."""
        return {"consistent": False, "warm": {"started_at": utc(self.started), "ended_at": utc(ended),
                                              "seconds": round(ended - self.started, 3), "passes": 1}}

    def commit(self, od: OutDir, image_name: str, entry: dict[str, Any]) -> Callable[[], None]:
        """What publishing the image runs under the directory lock: the sidecar, then the entry."""
        ended = time.time()
        car = sidecar.Sidecar(self.algorithm, entry["size"], self.digests)
        if entry.get("digest") is not None and car.folded() != entry["digest"]:
            raise AssertionError("the sidecar's digests do not fold to the export's digest")

        def run() -> None:  # the image is in place under its name: its stamp is what a later pass must find
            entry["image"] = image_stamp(od, od.path / image_name)
            entry["blocks"] = sidecar.write(od, sidecar.name_for(image_name), car)
            entry.update(self.fields(ended))
            entry.pop("sync_in_progress", None)
            manifest.record(od.path, entry)

        return run


def _epoch(stamp: object) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return None


def cutover(entry: dict[str, Any], now: float) -> dict[str, Any]:
    """``plan --cutover``: what the final pass (``export --sync``) of a warm image will cost, from the
    manifest alone (nothing is read).

    - rate of reading: bytes read / seconds of the last pass (its digest pass reads the same DATA);
    - rate of change: blocks the last delta pass found changed / seconds between the pass before it
      and that pass (unknown after a single warm pass: run ``--warm`` again to measure it);
    - changed blocks now: that rate times the seconds since the last pass, at most every block
      (a linear guess: a guest rewriting the same blocks makes it an overestimate);
    - seconds: the source's DATA read once, the image read once to verify, the changed blocks
      written (counted at the read rate), i.e. ``(2 * data + changed * 4 MiB) / read rate``.
    """
    delta = entry.get("delta") or {}
    warm = entry.get("warm") or {}
    size = int(entry.get("size") or 0)
    blocks = block_count(size)
    read = int(delta.get("bytes_read", entry.get("bytes_read")) or 0)
    secs = float(delta.get("seconds", entry.get("seconds")) or 0)
    read_rate = read / secs if read and secs > 0 else None
    last, since = _epoch(warm.get("ended_at")), _epoch(delta.get("since"))
    change_rate = None
    if delta and last is not None and since is not None and last > since:
        change_rate = int(delta.get("blocks_changed", 0)) / (last - since)
    changed = None if change_rate is None or last is None else min(blocks, math.ceil(change_rate * max(0, now - last)))
    seconds = None
    if read_rate and changed is not None:
        seconds = round((2 * read + changed * DIGEST_BLOCK) / read_rate, 1)
    return {"id": entry.get("id"), "output": entry.get("output"), "consistent": entry.get("consistent"),
            "passes": warm.get("passes"), "last_pass_ended_at": warm.get("ended_at"), "blocks": blocks,
            "read_rate": round(read_rate) if read_rate else None,
            "changed_blocks_per_s": round(change_rate, 4) if change_rate is not None else None,
            "expected_changed_blocks": changed, "estimated_seconds": seconds}
