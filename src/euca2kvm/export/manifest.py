# SPDX-License-Identifier: Apache-2.0
"""``OUTDIR/manifest.json``: what was exported, from where, and its digest.

::

    {"format": "euca2kvm-manifest", "version": 1,
     "volumes": [{"id", "vg", "lv", "size", "digest", "output", "format", "files", ...}]}

Entries are keyed by ``output``: re-exporting a volume replaces its entry, other entries stay.
The file is replaced atomically, so a crash never leaves half a manifest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from ..errors import FormatError, IOFailure

MANIFEST = "manifest.json"
FORMAT = "euca2kvm-manifest"
VERSION = 1
MAX_MANIFEST_BYTES = 64 << 20  # tens of thousands of entries fit in a few MiB
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")
_lock = threading.Lock()


def safe_name(name: str, fallback: str = "volume") -> str:
    """A file name from an id or LV name taken from metadata: no '/', no '..', no hidden file."""
    cleaned = _SAFE.sub("_", name).lstrip(".")
    cleaned = cleaned[:200]  # NAME_MAX is 255 with room for an extension
    return cleaned or fallback


def output_path(outdir: Path, name: str, ext: str) -> Path:
    path = outdir / f"{safe_name(name)}.{ext}"
    if path.resolve().parent != outdir.resolve():
        raise FormatError(f"refusing output name {name!r}: it would leave {outdir}")
    return path


def load(outdir: Path) -> dict[str, Any]:
    path = outdir / MANIFEST
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        return {"format": FORMAT, "version": VERSION, "volumes": []}
    except OSError as e:
        raise IOFailure(f"cannot read {path}: {e.strerror}") from e
    if len(raw) > MAX_MANIFEST_BYTES:
        raise FormatError(f"manifest larger than {MAX_MANIFEST_BYTES} bytes", str(path))
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"not valid JSON: {e}", str(path)) from None
    if not isinstance(data, dict) or not isinstance(data.get("volumes"), list):
        raise FormatError("not a euca2kvm manifest (no 'volumes' list)", str(path))
    if data.get("format", FORMAT) != FORMAT or int(data.get("version", VERSION)) > VERSION:
        raise FormatError(f"unsupported manifest format {data.get('format')!r} version "
                          f"{data.get('version')!r}", str(path))
    for i, v in enumerate(data["volumes"]):
        if not isinstance(v, dict) or not isinstance(v.get("output"), str):
            raise FormatError(f"volumes[{i}] has no 'output' path", str(path))
    return data


def record(outdir: Path, entry: dict[str, Any]) -> None:
    """Add or replace (by ``output``) one entry, atomically."""
    with _lock:
        data = load(outdir)
        vols = [v for v in data["volumes"] if v.get("output") != entry["output"]]
        vols.append(entry)
        vols.sort(key=lambda v: (str(v.get("id")), str(v.get("output"))))
        data["volumes"] = vols
        data["format"], data["version"] = FORMAT, VERSION
        path = outdir / MANIFEST
        tmp = outdir / f".{MANIFEST}.partial"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise IOFailure(f"cannot write {path}: {e.strerror}") from e
