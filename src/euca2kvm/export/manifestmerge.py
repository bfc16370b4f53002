# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm manifest merge``: the manifests of several hosts' export directories as one.

A merged manifest is an ordinary manifest (same schema, ``report`` and ``verify`` read it) whose
entries say where their image is: ``host`` (the host that exported it) and ``export_dir`` (the
absolute export directory on that host, in which ``output`` is resolved, confined as always).
``merged_from`` lists the manifests merged (host, directory, sha256 of the file, entry count).

Merging is done in two steps, so that a path is only ever recorded by the host that can see it:
each host merges its own ``manifest.json`` (``--host NAME``; its entries gain host and directory),
and the control host merges those files once fetched (entries that already carry a host and
directory keep them). Merging is idempotent: an entry seen twice (same host, directory and output)
is kept once.

Two entries of one volume id on different hosts or directories are a *duplicate* (reported, both
kept) when their digests agree and a *conflict* when digests of one algorithm (or their SHA-256)
differ: then nothing is written and the merge fails with exit 6.

Where an entry's image is checked (:func:`image_dir`): in its ``export_dir`` only when that
directory is on this machine and its own manifest lists the same output — a merged manifest is as
hostile as any, and this keeps ``verify`` and ``report`` reading only images an export directory's
own manifest claims. Any other entry is on another host (:class:`RemoteImage`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FormatError, UsageError, VerifyError
from ..safefs import read_bounded
from . import manifest, manifestcheck

HOST = "host"
EXPORT_DIR = "export_dir"
MERGED_FROM = "merged_from"
MAX_HOST = 255  # a DNS name's length; the schema says the same
# Conflicts and duplicates named in an error message; the --json summary lists them all.
SHOWN_CONFLICTS = 10


class RemoteImage(Exception):
    """An entry whose image is not on this machine; ``reason`` says where it is."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Merged:
    """The merged document and what the merge found."""

    document: dict[str, Any]
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        vols = self.document["volumes"]
        return {"volumes": len(vols), "hosts": sorted({str(v[HOST]) for v in vols}),
                "manifests": len(self.document[MERGED_FROM]), "duplicates": self.duplicates,
                "conflicts": self.conflicts}


def check_host(name: str) -> str:
    """``name`` as a host label: non-empty, printable, no '/', at most MAX_HOST characters."""
    if not name or len(name) > MAX_HOST or "/" in name or not name.isprintable() or name != name.strip():
        raise UsageError(f"--host {manifestcheck.shown(name)}: not a host name (1-{MAX_HOST} printable "
                         "characters, no '/', no surrounding space)")
    return name


def split_path(arg: str) -> tuple[Path, str]:
    """(directory, file name) of a MANIFEST argument: a manifest file or the directory holding manifest.json."""
    path = Path(arg)
    if path.is_dir():
        if not (path / manifest.MANIFEST).exists():
            raise UsageError(f"no {manifest.MANIFEST} in {arg}")
        return path.resolve(), manifest.MANIFEST
    if not (path.exists() or path.is_symlink()):
        raise UsageError(f"{arg} does not exist")
    return path.parent.resolve(), path.name


def read(arg: str) -> tuple[dict[str, Any], Path, str]:
    """(manifest, its directory, the sha256 of its bytes) of a MANIFEST argument, checked like any manifest."""
    directory, name = split_path(arg)
    data = manifest.load(directory, name)  # bounded, no symlink, schema-checked
    raw = read_bounded(directory / name, manifest.MAX_MANIFEST_BYTES)
    return data, directory, hashlib.sha256(raw).hexdigest()


def _key(entry: dict[str, Any], path: str = "") -> tuple[str, str, str]:
    """Where an entry's image is: (host, export directory, output relative to it); FormatError naming the
    manifest ``path`` when the output leaves its directory."""
    parts = manifestcheck._relative(entry[EXPORT_DIR], entry["output"], path or entry[EXPORT_DIR])
    return str(entry[HOST]), str(entry[EXPORT_DIR]), "/".join(parts)


def _clashes(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The fields in which two entries of one volume disagree: a digest of one algorithm, sha256."""
    out = []
    da, db = a.get("digest"), b.get("digest")
    if isinstance(da, str) and isinstance(db, str) and da.split(":", 1)[0] == db.split(":", 1)[0] and da != db:
        out.append("digest")
    if isinstance(a.get("sha256"), str) and isinstance(b.get("sha256"), str) and a["sha256"] != b["sha256"]:
        out.append("sha256")
    return out


def merge(args: list[str], host: str | None = None) -> Merged:
    """The merge of the manifests named by ``args`` (files, or directories holding manifest.json).

    Entries without a host get ``host`` (default: this machine's name) and their manifest's
    directory; merged entries keep theirs. Raises UsageError/FormatError for an unreadable input.
    """
    here = check_host(host) if host is not None else check_host(socket.gethostname() or "localhost")
    entries: dict[tuple[str, str, str], dict[str, Any]] = {}
    sources: dict[tuple[str, str], dict[str, Any]] = {}
    for arg in args:
        data, directory, digest = read(arg)
        path = str(directory / split_path(arg)[1])
        for src in data.get(MERGED_FROM, []):
            if isinstance(src, dict):
                sources.setdefault((str(src[HOST]), str(src[EXPORT_DIR])), src)
        own = 0
        for entry in data["volumes"]:
            if EXPORT_DIR not in entry:
                entry = {**entry, HOST: here, EXPORT_DIR: str(directory)}
                own += 1
            elif HOST not in entry:
                raise FormatError(f"entry {manifestcheck.shown(entry['id'])} has an export_dir but no host", path)
            entries[_key(entry, path)] = entry
        if own:
            sources[(here, str(directory))] = {HOST: here, EXPORT_DIR: str(directory), "sha256": digest,
                                               "volumes": own}
    result = Merged({"format": manifest.FORMAT, "version": manifest.VERSION,
                     MERGED_FROM: sorted(sources.values(), key=lambda s: (s[HOST], s[EXPORT_DIR])),
                     "volumes": sorted(entries.values(), key=lambda v: (str(v["id"]), _key(v)))})
    by_id: dict[str, list[dict[str, Any]]] = {}
    for entry in result.document["volumes"]:  # export-instance names the disk, volume_id the volume
        by_id.setdefault(str(entry.get("volume_id") or entry["id"]), []).append(entry)
    for vid, group in by_id.items():
        if len(group) < 2:
            continue
        where = [f"{e[HOST]}:{e[EXPORT_DIR]}" for e in group]
        fields = sorted({f for i, a in enumerate(group) for b in group[i + 1:] for f in _clashes(a, b)})
        item = {"id": vid, "where": where}
        if fields:
            result.conflicts.append({**item, "fields": fields})
        else:
            result.duplicates.append(item)
    return result


def write(merged: Merged, out: Path) -> None:
    """Write the merged manifest to ``out`` atomically, after checking it against the schema; refuse a
    conflict (exit 6) or an export directory's own manifest.json as the target (exit 2)."""
    if merged.conflicts:
        names = "; ".join(f"{manifestcheck.shown(c['id'])} ({', '.join(c['fields'])} differ in "
                          f"{', '.join(c['where'])})" for c in merged.conflicts[:SHOWN_CONFLICTS])
        more = len(merged.conflicts) - SHOWN_CONFLICTS
        raise VerifyError(f"{len(merged.conflicts)} volume(s) exported more than once with different content, "
                          f"nothing written: {names}" + (f" and {more} more" if more > 0 else ""))
    if out.name == manifest.MANIFEST:
        raise UsageError(f"-o {out}: a merged manifest never replaces an export directory's {manifest.MANIFEST}; "
                         "name it otherwise (merged.json)")
    if out.is_dir():
        raise UsageError(f"-o {out} is a directory; name the merged manifest's file")
    from ..outdir import write_atomic

    text = json.dumps(merged.document, indent=2, sort_keys=True) + "\n"
    manifestcheck.parse(text.encode("utf-8"), str(out))  # what we write, readers accept
    write_atomic(out, text)


def image_dir(manifest_dir: Path, entry: dict[str, Any], seen: dict[str, frozenset[str] | None]) -> Path:
    """The directory in which ``entry``'s output is resolved: ``manifest_dir`` for a plain entry; for a
    merged one its ``export_dir``, when that directory is here and its own manifest lists the same output.
    RemoteImage otherwise. ``seen`` caches each directory's outputs (None: not here) for one run."""
    edir = entry.get(EXPORT_DIR)
    if not isinstance(edir, str):
        return manifest_dir
    norm = os.path.normpath(edir)
    host = manifestcheck.shown(entry.get(HOST, "?"))
    if norm not in seen:
        seen[norm] = _outputs_here(Path(norm))
    outputs = seen[norm]
    try:
        wanted = "/".join(manifestcheck._relative(norm, entry["output"], norm))
    except FormatError as e:
        raise RemoteImage(f"on host {host}: {e.reason}") from None
    if outputs is None or wanted not in outputs:
        raise RemoteImage(f"on host {host} in {manifestcheck.shown(norm)}, not here: verify it there")
    return Path(norm)


def _outputs_here(directory: Path) -> frozenset[str] | None:
    """The outputs (relative to ``directory``) its own manifest.json lists, or None when there is none here."""
    try:
        if not (directory / manifest.MANIFEST).is_file():
            return None
        data = manifest.load(directory)
    except (OSError, FormatError, UsageError):
        return None
    out = set()
    for v in data["volumes"]:
        try:
            out.add("/".join(manifestcheck._relative(str(directory), v["output"], str(directory))))
        except FormatError:
            continue
    return frozenset(out)
