# SPDX-License-Identifier: Apache-2.0
"""Thin typed wrappers around ``qemu-img``: every call is a :func:`euca2kvm.procs.run` with a timeout.

Failures raise :class:`ToolError` carrying the tail of qemu-img's stderr, or :class:`IOFailure`
when that tail names an I/O errno (no space left, quota, file too large, EIO: exit 5, like the
raw writer's); ``compare`` returns
``False`` for "images differ" (exit 1) so callers can raise :class:`VerifyError` themselves.
The binary is ``$QEMU_IMG`` if set, else ``qemu-img`` on ``PATH``.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .. import procs
from ..errors import ToolError
from ..units import MiB

ENV_BINARY = "QEMU_IMG"
# Metadata commands (info, map, measure, --version) on local images finish in well under a second;
# a minute only trips on a hung NFS mount or a wedged NBD server.
QUICK_TIMEOUT = 60.0
# convert/compare can legitimately run for hours on TiB volumes, so by default they have no total
# limit; instead they die when qemu-img prints no progress (-p) for this long. qemu-img prints every
# 1 %, so this allows about 1 % of a volume per 30 minutes (20 GiB of a 2 TiB volume at 11 MiB/s).
STALL_TIMEOUT = 1800.0
# stdout is JSON for info/map/measure; a map of a heavily fragmented TiB image is a few MiB.
MAX_STDOUT = 64 * MiB
# Exit statuses of ``qemu-img compare`` beyond 0 (identical) and 1 (different).
_COMPARE_ERRORS = {2: "error opening an image", 3: "error checking sector allocation",
                   4: "error reading an image"}
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
_VERSION = re.compile(r"qemu-img version (\d+)\.(\d+)\.(\d+)")

ProgressCallback = Callable[[float], None]


def binary() -> str:
    return os.environ.get(ENV_BINARY) or "qemu-img"


def _run(args: Sequence[str], *, timeout: float | None = QUICK_TIMEOUT, stall_timeout: float | None = None,
         progress_cb: ProgressCallback | None = None, ok: Sequence[int] | None = (0,),
         max_stdout: int = MAX_STDOUT) -> tuple[int, bytes]:
    """Run ``qemu-img args`` through :func:`procs.run`; (exit status, stdout).

    ``timeout`` bounds the whole run, ``stall_timeout`` the time between two stdout writes
    (progress lines when ``-p`` is given).
    """

    def progress(chunk: bytes) -> None:
        if progress_cb is not None:
            for m in _PROGRESS.finditer(chunk):
                progress_cb(float(m.group(1)))

    res = procs.run([binary(), *args], timeout=timeout, stall_timeout=stall_timeout, ok=ok,
                    max_stdout=max_stdout, on_output=progress, hint=f"set ${ENV_BINARY} or install qemu-utils")
    return res.status, res.stdout


def _json(args: Sequence[str], max_stdout: int = MAX_STDOUT) -> Any:
    _, out = _run([*args, "--output", "json"], max_stdout=max_stdout)
    try:
        return json.loads(out)
    except ValueError as e:
        raise ToolError(f"qemu-img {args[0]} printed invalid JSON: {e}") from e


def _source(spec: str, fmt: str | None, image_opts: bool) -> list[str]:
    if image_opts:
        return ["--image-opts", spec]
    return (["-f", fmt] if fmt else []) + [spec]


def _options(options: Mapping[str, object]) -> str:
    """``-o`` value: ``k=v`` pairs joined by commas; commas in values are doubled (qemu escaping)."""
    parts = []
    for k, v in options.items():
        value = ("on" if v else "off") if isinstance(v, bool) else str(v)
        parts.append(f"{k}={value.replace(',', ',,')}")
    return ",".join(parts)


@functools.lru_cache(maxsize=8)
def _version(path: str) -> tuple[int, int, int]:
    _, out = _run(["--version"])
    m = _VERSION.search(out.decode("utf-8", "replace"))
    if m is None:
        raise ToolError(f"{path} --version printed no version: {out[:200]!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def version() -> tuple[int, int, int]:
    """(major, minor, micro) of the qemu-img in use, e.g. (7, 2, 22)."""
    return _version(binary())


def convert(src_spec: str, dst: str, out_fmt: str, options: Mapping[str, object] | None = None,
            compress: bool = False, src_image_opts: bool = False,
            progress_cb: ProgressCallback | None = None, *, src_fmt: str = "raw",
            coroutines: int | None = None, timeout: float | None = None,
            stall_timeout: float | None = STALL_TIMEOUT) -> None:
    """``qemu-img convert`` ``src_spec`` (a path, ``json:`` spec, NBD URI or, with
    ``src_image_opts``, an ``--image-opts`` string) to a new ``dst`` image of ``out_fmt``.

    Arguments:
        options (dict): ``-o`` creation options, e.g. ``{"subformat": "streamOptimized"}``.
        compress (bool): ``-c`` (qcow2 and streamOptimized vmdk only).
        progress_cb (callable): called with the percentage (0.0-100.0) as qemu-img reports it.
        coroutines (int): ``-m``, parallel requests (qemu default 8). A verified qcow2 export from
            our NBD server measured no better with ``-m 16`` or ``-W`` (2 GiB page-cached, three
            interleaved runs: CPU median 10.1 and 10.0 s against 9.25 s, wall within the noise).
    """
    args = ["convert", "-p"]
    args += _source(src_spec, None if src_image_opts else src_fmt, src_image_opts)
    args += ["-O", out_fmt]
    if options:
        args += ["-o", _options(options)]
    if compress:
        args.append("-c")
    if coroutines is not None:
        args += ["-m", str(coroutines)]
    args.append(dst)
    _run(args, timeout=timeout, stall_timeout=stall_timeout, progress_cb=progress_cb)


def compare(a: str, b: str, strict: bool = False, *, fmt_a: str | None = None, fmt_b: str | None = None,
            image_opts: bool = False, timeout: float | None = None,
            stall_timeout: float | None = STALL_TIMEOUT) -> bool:
    """True when the guest-visible contents are identical, False when they differ.

    Used only by the tests, as ground truth independent of the project's own digest: exports verify
    by comparing block digests (:mod:`.imagedigest`), never with ``qemu-img compare``.

    ``strict`` (``-s``) also fails on different sizes or allocation (use it for raw vs raw).
    Other exit statuses (open/allocation/read errors) raise :class:`ToolError`.
    """
    args = ["compare", "-p"]
    if strict:
        args.append("-s")
    if image_opts:
        args += ["--image-opts", a, b]
    else:
        args += (["-f", fmt_a] if fmt_a else []) + (["-F", fmt_b] if fmt_b else []) + [a, b]
    res = procs.run([binary(), *args], timeout=timeout, stall_timeout=stall_timeout, ok=None,
                    max_stdout=MAX_STDOUT, hint=f"set ${ENV_BINARY} or install qemu-utils")
    if res.status not in (0, 1):
        meaning = _COMPARE_ERRORS.get(res.status)
        raise res.failure(f"qemu-img compare: {meaning}: " if meaning else "")
    return res.status == 0


# qemu-img check exit statuses: 0 clean, 2 corruptions, 3 leaked clusters only, 63 format has no checks
CHECK_STATUSES = (0, 2, 3, 63)


def check(path: str, fmt: str, *, timeout: float | None = QUICK_TIMEOUT) -> tuple[int, str]:
    """``qemu-img check --output json``: (exit status, JSON text); statuses other than CHECK_STATUSES raise."""
    rc, out = _run(["check", "--output", "json", "-f", fmt, path], timeout=timeout, ok=CHECK_STATUSES)
    return rc, out.decode("utf-8", "replace")


def measure(src: str, out_fmt: str, *, src_fmt: str | None = None, src_image_opts: bool = False,
            options: Mapping[str, object] | None = None) -> dict[str, Any]:
    """``qemu-img measure``: ``{"required": bytes, "fully-allocated": bytes, ...}`` for ``out_fmt``."""
    args = ["measure", "-O", out_fmt]
    if options:
        args += ["-o", _options(options)]
    result = _json([*args, *_source(src, src_fmt, src_image_opts)])
    if not isinstance(result, dict) or "required" not in result:
        raise ToolError(f"qemu-img measure printed an unexpected result: {str(result)[:200]}")
    return result


def create(path: str, fmt: str, size: int) -> None:
    """``qemu-img create -f FMT PATH SIZE``: a new empty image with no backing file."""
    _run(["create", "-q", "-f", fmt, path, str(size)])


def info(path: str, *, fmt: str | None = None, image_opts: bool = False) -> dict[str, Any]:
    """``qemu-img info --output json`` (``virtual-size``, ``format``, ``format-specific``...)."""
    result = _json(["info", *_source(path, fmt, image_opts)])
    if not isinstance(result, dict):
        raise ToolError(f"qemu-img info printed an unexpected result: {str(result)[:200]}")
    return result


def map(path: str, *, fmt: str | None = None, image_opts: bool = False,
        max_stdout: int = MAX_STDOUT) -> list[dict[str, Any]]:
    """``qemu-img map --output json``: ``[{start, length, data, zero, present, depth, offset?}]``
    (ToolError when it prints more than ``max_stdout`` bytes)."""
    result = _json(["map", *_source(path, fmt, image_opts)], max_stdout)
    if not isinstance(result, list):
        raise ToolError(f"qemu-img map printed an unexpected result: {str(result)[:200]}")
    return result

