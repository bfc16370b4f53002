# SPDX-License-Identifier: Apache-2.0
"""``OUTDIR/manifest.json``: what was exported, from where, and its digest.

::

    {"format": "euca2kvm-manifest", "version": 1,
     "volumes": [{"id", "vg", "lv", "size", "digest", "output", "format", "files", ...}]}

Entries are keyed by ``output``: re-exporting a volume replaces its entry, other entries stay.
The file is replaced atomically, so a killed run never leaves half a manifest (nor, when the
export flushes it, ``--fsync``, does a power loss: see :func:`record`).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import FormatError, IOFailure, UsageError
from ..outdir import OutDir
from ..safefs import read_bounded
from . import manifestcheck

MANIFEST = "manifest.json"
FORMAT = "euca2kvm-manifest"
VERSION = 1
MAX_MANIFEST_BYTES = 64 << 20  # tens of thousands of entries fit in a few MiB
# Characters an output name keeps as they are: every volume id (vol-/volume-/snap-XXXXXXXX),
# instance disk names and lvm2 names without '_' stay unchanged.
_KEEP = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.+-")
# NAME_MAX is 255 bytes; this leaves room for the extension, the ".partial" and ".boot.png" suffixes.
MAX_NAME = 200
# A longer name keeps its start and ends in "~" + this many hex digits of its sha256 ("~" is never
# produced otherwise, so a shortened name cannot equal an unshortened one).
NAME_HASH_HEX = 16


def safe_name(name: str, fallback: str = "volume") -> str:
    """The file name (without extension) of an output whose id is ``name``; injective and reversible.

    Ids come from metadata, tags, file names and inventories, so anything can be in them. '/' (the
    VG/LV separator) becomes '_'; letters, digits, '.', '+' and '-' stay; every other byte of the
    UTF-8 encoding, '_' and '%' included, becomes %XX; a leading '.' becomes %2E (never a hidden
    file, never '.' or '..'). Decoding is: '_' -> '/', %XX -> byte. So ``data/x_y`` is
    ``data_x%5Fy`` and ``data_x/y`` is ``data%5Fx_y``, ``a b`` is ``a%20b`` and ``a_b`` is ``a%5Fb``,
    while ``vol-4708bf47`` and ``vg-mseg/lvA`` keep today's names (``vg-mseg_lvA``).
    Names longer than MAX_NAME are cut and end in "~<hash>" (injective up to a sha256 collision);
    an empty name becomes ``fallback``. Two ids differing only in case stay distinct names, which a
    case-insensitive destination (vfat, exFAT, SMB, macOS) would still merge: not handled here.
    """
    out: list[str] = []
    for ch in name:
        if ch in _KEEP:
            out.append(ch)
        elif ch == "/":
            out.append("_")
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    if out and out[0] == ".":
        out[0] = "%2E"
    cleaned = "".join(out)
    if len(cleaned) > MAX_NAME:
        tag = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:NAME_HASH_HEX]
        cleaned = cleaned[: MAX_NAME - NAME_HASH_HEX - 1] + "~" + tag
    return cleaned or fallback


def output_path(outdir: Path, name: str, ext: str) -> Path:
    """``OUTDIR/<safe_name(name)>.<ext>``: the one place an id becomes an output path."""
    path = outdir / f"{safe_name(name)}.{ext}"
    if path.resolve().parent != outdir.resolve():
        raise FormatError(f"refusing output name {name!r}: it would leave {outdir}")
    return path


def check_distinct(outputs: Iterable[tuple[str, Path]]) -> None:
    """UsageError naming both sources when two of one run's sources would write the same output.

    ``outputs`` are (description of the source, output path). Names are injective, so this
    catches two sources with the same id (two containers whose LVs carry the same tag, a DAS LV
    and an overlay volume of one id, ...) and the fallback and shortened names.
    """
    seen: dict[Path, str] = {}
    for who, path in outputs:
        if path in seen and seen[path] != who:
            raise UsageError(f"{seen[path]} and {who} would both be exported as {path}; export them "
                             "one at a time into different directories to keep both")
        seen.setdefault(path, who)


def load(outdir: Path, name: str = MANIFEST) -> dict[str, Any]:
    """The manifest in ``outdir`` (an empty one if there is none), checked by :mod:`.manifestcheck`:
    bounded size and nesting, valid JSON, the shipped JSON Schema, a version this code reads.
    A manifest that is a symbolic link, a FIFO or anything but a regular file is refused unopened.
    ``name`` is another file name in ``outdir`` holding a manifest (a merged one, ``manifest merge``)."""
    path = outdir / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {"format": FORMAT, "version": VERSION, "volumes": []}
    except OSError as e:
        raise IOFailure(f"cannot read {path}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise FormatError("refusing a manifest that is not a regular file (a link, FIFO, device...)", str(path))
    if st.st_size > MAX_MANIFEST_BYTES:
        raise FormatError(f"manifest larger than {MAX_MANIFEST_BYTES} bytes", str(path))
    raw = read_bounded(path, MAX_MANIFEST_BYTES)  # O_NOFOLLOW, regular file, bounded even if it grows
    data = manifestcheck.parse(raw, str(path))
    if data.get("version", VERSION) > VERSION:  # the schema says so too; this keeps VERSION the authority
        raise FormatError(f"unsupported manifest version {data['version']} (this euca2kvm reads up to "
                          f"{VERSION})", str(path))
    return data


def record(outdir: Path, entry: dict[str, Any], fsync: bool = True) -> None:
    """Add or replace (by ``output``) one entry, atomically.

    The read-modify-write runs under the output directory's inter-process lock, so concurrent
    runs (and threads) never lose each other's entries; the new manifest is written under a unique
    O_EXCL temporary name and renamed over the old one, so a killed run leaves the old manifest or
    the new one, never half of one. ``fsync``: flushed with its directory first, so that it survives
    a power loss too. An export asks for that per volume only with ``--fsync``, as for its images: on
    ext4 the manifest's flush commits the journal with the image just published, hundreds of ms per
    volume, under the lock every other job's publish waits for. Without, a batch calls :func:`flush`
    once at its end; an image or record a power loss took before is found by the next run's resume
    check (the digest is compared) and exported again.
    """
    with OutDir(outdir) as od, od.lock():
        data = load(outdir)
        vols = [v for v in data["volumes"] if v.get("output") != entry["output"]]
        vols.append(entry)
        vols.sort(key=lambda v: (str(v.get("id")), str(v.get("output"))))
        data["volumes"] = vols
        data["format"], data["version"] = FORMAT, VERSION
        raw = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")
        manifestcheck.written(raw)  # before the rename: a job reading it at once needs no validator either
        od.write_file(MANIFEST, raw, fsync=fsync)


def flush(outdir: Path) -> None:
    """Flush ``OUTDIR/manifest.json`` and the directory to stable storage, if there is one: once at the
    end of a batch whose entries were recorded without (see :func:`record`)."""
    with OutDir(outdir) as od:
        if od.lstat(MANIFEST) is not None:
            od.flush(MANIFEST)
