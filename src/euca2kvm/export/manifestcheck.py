# SPDX-License-Identifier: Apache-2.0
"""Reading a ``manifest.json`` that may be hostile, and confining the outputs it names.

A manifest lies in a directory anyone with write access there may have edited, so its bytes are
checked in three steps before anything trusts them:

1. nesting depth, by a scan that neither recurses nor builds anything (a deeply nested document
   would otherwise raise ``RecursionError`` in the parser or the validator);
2. JSON, with ``NaN``/``Infinity``, non-finite floats and integers longer than Python's digit
   limit refused;
3. the JSON Schema shipped next to this module (``manifest.schema.json``, draft 2020-12).

Every failure is a :class:`FormatError` naming the file and, for the schema, the JSON location.

An entry's ``output`` is resolved by :func:`entry_path`: relative to the manifest's directory
(absolute paths, as older manifests hold, only when they lie inside it), never leaving it, no
symbolic link followed at any component, and only a regular file accepted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import stat
import threading
from pathlib import Path
from typing import Any

from ..errors import FormatError

SCHEMA_FILE = "manifest.schema.json"
# Nesting the tool writes: document > volumes > entry > source > item (5), or an entry's objects such
# as boot_test. 16 leaves room for fields added later, keeps the parser and the schema validator
# (both recursive) far below Python's recursion limit, and bounds the check: at most 16 passes over
# the brackets (a hostile 64 MiB manifest costs seconds, see nesting_ok).
MAX_DEPTH = 16
# Characters of a hostile value quoted in an error message.
SHOWN = 120
# A JSON string (escapes included) or, unterminated, the rest of the input. Possessive and never
# failing once a quote is seen, so input full of quotes and backslashes is scanned in linear time.
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_OPENERS = b"[{"
_CLOSERS = b"]}"
# After strings are removed: every opener becomes "(" and every closer ")", anything else goes.
_BRACKETS = bytes.maketrans(_OPENERS + _CLOSERS, b"(())")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _OPENERS + _CLOSERS)
# Entries are validated one by one and remembered (a 16-byte hash of their canonical JSON) once valid:
# an export re-reads the manifest several times per volume, and the validator costs about a
# millisecond per entry. 2^17 hashes (more entries than a manifest holds) take about 12 MiB; the set is
# emptied when full.
MAX_REMEMBERED = 1 << 17
_valid_entries: set[bytes] = set()
# Manifests this process wrote (a 16-byte hash of their bytes): read back, they are data it had
# checked or built itself, so a batch recording one volume after another neither imports jsonschema
# (a fifth of a second here) nor validates for its own writes. Any other bytes are checked in full.
# Only the newest writes matter (one per output directory); the set is emptied when full.
MAX_OWN = 64
_own: set[bytes] = set()
_validators_lock = threading.Lock()  # two jobs' first reads build the validators once


def shown(value: object) -> str:
    """A value from a hostile file for a message: quoted, control characters escaped, cut short."""
    text = value if isinstance(value, str) else str(value)
    return repr(text[:SHOWN]) + ("..." if len(text) > SHOWN else "")


def nesting_ok(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether no bracket outside a JSON string is nested deeper than ``limit`` (nor left open).

    Strings are cut out, every bracket becomes "(" or ")", and each pass removes the innermost
    "()" pairs: after ``limit`` passes an opener left over is nested deeper or never closed (which
    would make the parser recurse just the same). A run of more than ``limit`` openers is caught
    at once. Mismatched pairs such as "[}" are left for the parser to report. Linear in the size
    times ``limit`` at worst, with no recursion and no per-byte Python loop.
    """
    s = _STRING.sub(b"", raw).translate(_BRACKETS, _NOT_BRACKETS)
    too_deep = b"(" * (limit + 1)
    for _ in range(limit):
        if too_deep in s:
            return False
        shorter = s.replace(b"()", b"")
        if len(shorter) == len(s):
            break
        s = shorter
    return b"(" not in s


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _validators() -> tuple[Any, Any]:
    """(validator of the document without its entries, validator of one entry), from the one schema."""
    with _validators_lock:
        return _build_validators()


@functools.lru_cache(maxsize=1)
def _build_validators() -> tuple[Any, Any]:
    import jsonschema  # here: only commands reading a manifest pay for the import

    text = _schema_text()
    full = json.loads(text)
    cls = jsonschema.validators.validator_for(full)
    cls.check_schema(full)
    top = json.loads(text)
    entry = top["properties"]["volumes"].pop("items")
    return cls(top), cls({"$schema": full["$schema"], **entry})


def schema() -> dict[str, Any]:
    """The manifest's JSON Schema, as shipped."""
    schema: dict[str, Any] = json.loads(_schema_text())
    return schema


def _schema_text() -> str:
    from importlib import resources  # here: an export that writes its own manifest never loads it

    return resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


def written(raw: bytes) -> None:
    """Note that this process wrote the manifest ``raw`` (see ``_own``)."""
    if len(_own) >= MAX_OWN:
        _own.clear()
    _own.add(_digest(raw))


def _digest(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=16).digest()


def parse(raw: bytes, path: str) -> dict[str, Any]:
    """The manifest held in ``raw`` (read from ``path``), checked; FormatError otherwise."""
    if _digest(raw) in _own:
        own: dict[str, Any] = json.loads(raw)
        return own
    if not nesting_ok(raw):
        raise FormatError(f"not a euca2kvm manifest: brackets nested deeper than {MAX_DEPTH} levels or left open",
                          path)
    try:
        data = json.loads(raw, parse_constant=_constant, parse_float=_finite)
    except ValueError as e:  # includes UnicodeDecodeError and integers beyond the digit limit
        raise FormatError(f"not valid JSON: {shown(str(e))}", path) from None
    top, entry = _validators()
    error = _first_error(top, data, "")
    if error is None:
        for i, v in enumerate(data["volumes"]):
            key = _entry_key(v)
            if key in _valid_entries:
                continue
            error = _first_error(entry, v, f"volumes[{i}]")
            if error is not None:
                break
            if len(_valid_entries) >= MAX_REMEMBERED:
                _valid_entries.clear()
            _valid_entries.add(key)
    if error is not None:
        raise FormatError(f"not a valid euca2kvm manifest: {error}", path)
    return data


def _entry_key(entry: Any) -> bytes:
    text = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _digest(text.encode("utf-8", "surrogatepass"))


def _first_error(validator: Any, data: Any, prefix: str) -> str | None:
    import jsonschema

    if validator.is_valid(data):
        return None
    err = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if err is None:
        return None
    where = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
    what = {"type": f"must be of type {err.validator_value}", "enum": f"must be one of {err.validator_value}",
            "const": f"must be {err.validator_value!r}", "maximum": f"must be at most {err.validator_value}",
            "minimum": f"must be at least {err.validator_value}",
            "maxLength": f"is longer than {err.validator_value} characters",
            "minLength": "must not be empty", "pattern": "is not in the expected form"}.get(
        str(err.validator), f"fails the schema's {shown(err.validator)} rule")
    if err.validator == "required":
        what = f"lacks a required field ({shown(err.message)})"
    elif err.validator != "maxLength":
        what += f" (found {shown(err.instance) if isinstance(err.instance, str) else _kind(err.instance)})"
    return f"{where or '(top level)'} {what}"


def _kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return shown(value)
    return type(value).__name__.replace("dict", "object").replace("list", "array")


def _relative(outdir: str, output: str, manifest: str) -> list[str]:
    """The components of ``output`` below ``outdir``; FormatError if it would leave it."""
    if "\0" in output:
        raise FormatError(f"output {shown(output)} contains a NUL byte", manifest)
    if os.path.isabs(output):
        norm = os.path.normpath(output)
        for base in {os.path.abspath(outdir), os.path.realpath(outdir)}:
            if norm.startswith(base.rstrip("/") + "/"):
                output = norm[len(base.rstrip("/")) + 1:]
                break
        else:
            raise FormatError(f"output {shown(output)} is outside the manifest's directory", manifest)
    parts = [p for p in output.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise FormatError(f"output {shown(output)} leaves the manifest's directory", manifest)
    return parts


def entry_path(outdir: Path, output: str) -> Path:
    """The image an entry's ``output`` names, confined to ``outdir`` (the manifest's directory).

    Raises FileNotFoundError when it does not exist, FormatError when it leaves the directory,
    passes through a symbolic link or is not a regular file. Only ``lstat`` is used: nothing is
    opened, so a FIFO or device named there is never touched.
    """
    manifest = str(outdir / "manifest.json")
    parts = _relative(str(outdir), output, manifest)
    base = os.path.realpath(outdir)
    current = base
    for i, part in enumerate(parts):
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)  # FileNotFoundError goes to the caller: the image is missing
        except FileNotFoundError:
            raise
        except OSError as e:  # ENOTDIR cannot happen: every component before was checked to be a directory
            raise FormatError(f"output {shown(output)}: cannot examine {shown(part)}: {e.strerror}",
                              manifest) from e
        last = i == len(parts) - 1
        if stat.S_ISLNK(st.st_mode):
            raise FormatError(f"output {shown(output)} passes through the symbolic link {shown(part)}", manifest)
        if not last and not stat.S_ISDIR(st.st_mode):
            raise FileNotFoundError(current)
        if last and not stat.S_ISREG(st.st_mode):
            raise FormatError(f"output {shown(output)} is not a regular file", manifest)
    return Path(current)
