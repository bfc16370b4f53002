# SPDX-License-Identifier: Apache-2.0
"""Oracle: real lvm2 ``pvck --dump`` on a plain container file, parsed into plain dicts.

``pvck --dump headers FILE`` (lvm2 2.03.16) prints one ``key value`` line per on-disk field, for
example ``mda_header_1.raw_locn[0].offset 1536``; ``pvck --dump metadata -f OUT FILE`` writes the
current metadata text. Both work on regular files, so no loop device is needed. The project's own
label / pv_header / mda_header parser is checked against :func:`headers`.

``headers(path)`` returns (every integer is a Python ``int``; checksums too)::

    {
      "rc": int,                       # pvck exit status
      "label": {"at": 512, "id": "LABELONE", "sector": 1, "crc": int, "offset": 32,
                "type": "LVM2 001"},   # label_header; "at" = absolute byte offset
      "pv_uuid": str,                  # 32 chars, no dashes
      "device_size": int,              # bytes, pv_header.device_size
      "data_areas": [{"offset": int, "size": int}],      # pv_header disk_locn, size 0 = to the end
      "metadata_areas": [{"offset": int, "size": int}],  # absolute offset and size of each mda
      "extension": {"version": int, "flags": int} | None,
      "mdas": [{                       # one per "mda_header_N" found, in order N = 1, 2
          "index": int, "at": int, "checksum": int, "magic": str (hex, "0x204c...") ,
          "version": int, "start": int, "size": int,
          "raw_locn": [{"offset": int, "size": int, "checksum": int, "flags": int}],
                                       # as dumped: [0] = commit, [1] = precommit (0s when idle)
          "text_at": int | None, "text_crc": int | None,   # absolute offset of the current text
          "vgname": str | None, "seqno": int | None,
      }],
      "checks": [str],                 # every "CHECK: ..." complaint pvck printed (corruption)
      "lines": [str],                  # the raw output, stripped, for debugging
    }

``metadata(path)`` returns ``{"rc": int, "text": str | None}``: the current text exactly as pvck
wrote it with ``-f`` (no trailing NUL).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

# pvck reads a few sectors of a sparse file: it finishes in well under a second; 60 s means hung.
PVCK_TIMEOUT_S = 60

_ENV = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1", "LC_ALL": "C"}
_KEY = r"[a-z_0-9]+(?:\[\d+\])?"
_KV = re.compile(rf"^(?P<key>{_KEY}(?:\.{_KEY})*)\s+(?P<val>.*?)\s*(?:#\s*(?P<note>.*))?$")
_TEXT = re.compile(r"^metadata text at (\d+) crc (0x[0-9a-f]+) # vgname (\S+) seqno (\d+)")
_INT_FIELDS = {"sector", "offset", "size", "version", "start", "device_size", "flags"}
_HEX_FIELDS = {"crc", "checksum"}


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["pvck", *args], capture_output=True, text=True, timeout=PVCK_TIMEOUT_S, env=_ENV, check=False
    )


def _num(field: str, val: str) -> int | str:
    if field in _HEX_FIELDS or val.startswith("0x"):
        try:
            return int(val, 16)
        except ValueError:
            return val
    if field in _INT_FIELDS:
        try:
            return int(val)
        except ValueError:
            return val
    return val


def parse_headers(out: str) -> dict[str, Any]:
    """Parse the stdout+stderr of ``pvck --dump headers`` (see the module docstring)."""
    res: dict[str, Any] = {
        "label": {}, "pv_uuid": None, "device_size": None, "data_areas": [], "metadata_areas": [],
        "extension": None, "mdas": [], "checks": [], "lines": [],
    }
    mdas: dict[int, dict[str, Any]] = {}
    locn_kind: dict[int, str] = {}
    locns: dict[int, dict[str, int]] = {}
    last_mda: dict[str, Any] | None = None
    for raw in out.splitlines():
        line = raw.strip()
        if not line:
            continue
        res["lines"].append(line)
        if line.startswith("CHECK:"):
            res["checks"].append(line[len("CHECK:"):].strip())
            continue
        t = _TEXT.match(line)
        if t:
            if last_mda is not None:
                last_mda.update(text_at=int(t[1]), text_crc=int(t[2], 16), vgname=t[3], seqno=int(t[4]))
            continue
        m = _KV.match(line)
        if not m:
            continue
        key, val, note = m["key"], m["val"], (m["note"] or "")
        parts = key.split(".")
        head = parts[0]
        if head == "label_header":
            if len(parts) == 1:
                res["label"]["at"] = int(val.split()[-1]) if val.startswith("at") else val
            else:
                res["label"][parts[1]] = _num(parts[1], val)
        elif head == "pv_header" and len(parts) > 1:
            if len(parts) == 2 and parts[1] == "pv_uuid":
                res["pv_uuid"] = val
            elif len(parts) == 2 and parts[1] == "device_size":
                res["device_size"] = int(val)
            elif parts[1].startswith("disk_locn["):
                idx = int(parts[1][len("disk_locn["):-1])
                if len(parts) == 2:
                    locn_kind[idx] = note
                else:
                    locns.setdefault(idx, {})[parts[2]] = int(val)
        elif head == "pv_header_extension" and len(parts) == 2 and parts[1] in ("version", "flags"):
            res["extension"] = res["extension"] or {}
            res["extension"][parts[1]] = int(val)
        elif head.startswith("mda_header_"):
            n = int(head[len("mda_header_"):])
            mda = mdas.setdefault(n, {"index": n, "raw_locn": [], "text_at": None, "text_crc": None,
                                      "vgname": None, "seqno": None})
            last_mda = mda
            if len(parts) == 1:
                mda["at"] = int(val.split()[-1])
            elif parts[1].startswith("raw_locn["):
                idx = int(parts[1][len("raw_locn["):-1])
                while len(mda["raw_locn"]) <= idx:
                    mda["raw_locn"].append({})
                if len(parts) == 3:
                    mda["raw_locn"][idx][parts[2]] = _num(parts[2], val)
            elif parts[1] == "magic":
                mda["magic"] = val
            else:
                mda[parts[1]] = _num(parts[1], val)
    for idx in sorted(locns):
        kind = locn_kind.get(idx, "")
        if "metadata area" in kind:
            res["metadata_areas"].append(locns[idx])
        elif "data area" in kind:
            res["data_areas"].append(locns[idx])
    res["mdas"] = [mdas[n] for n in sorted(mdas)]
    return res


def headers(path: Path) -> dict[str, Any]:
    """Run ``pvck --dump headers`` on a file and parse it."""
    cp = _run(["--dump", "headers", str(path)])
    res = parse_headers(cp.stdout + "\n" + cp.stderr)
    res["rc"] = cp.returncode
    return res


def metadata(path: Path) -> dict[str, Any]:
    """Run ``pvck --dump metadata -f OUT`` on a file: the current metadata text, or None."""
    with tempfile.TemporaryDirectory(prefix="pvck-") as td:
        out = Path(td) / "metadata.txt"  # pvck refuses to overwrite: always a fresh name
        cp = _run(["--dump", "metadata", "-f", str(out), str(path)])
        text = out.read_text(errors="surrogateescape") if out.exists() else None
    return {"rc": cp.returncode, "text": text}
