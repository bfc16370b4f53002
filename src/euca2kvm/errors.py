# SPDX-License-Identifier: Apache-2.0
"""Typed errors. Each class carries the process exit code the CLI maps it to.

:data:`EXIT_CODES` is the one table of exit codes and their meanings: ``euca2kvm --help`` prints
it (:func:`epilog`) and the README's "Exit codes" section is generated from it
(``python -m euca2kvm.errors --markdown``; a test keeps the two equal).
"""

from __future__ import annotations

import sys

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_FORMAT = 3
EXIT_IN_USE = 4
EXIT_IO = 5
EXIT_VERIFY = 6
EXIT_TOOL = 7
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

# (code, meaning); ``--force`` in backquotes is an option name (code in Markdown, plain in --help).
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_INTERNAL, "internal error: a bug, please report it with the traceback"),
    (EXIT_USAGE, "usage error: bad arguments, unknown volume id (close matches are suggested)"),
    (EXIT_FORMAT, "input format error: an invalid or unsupported container, PV, metadata, LV type or guest "
                  "structure"),
    (EXIT_IN_USE, "a source is in use (loop device, device-mapper, open by a process, tgt target); "
                  "`--force` overrides"),
    (EXIT_IO, "I/O error: a read or write failed, no space left"),
    (EXIT_VERIFY, "verification failed: a digest or comparison did not match"),
    (EXIT_TOOL, "an external tool failed or timed out (qemu-img, qemu-nbd, qemu, debugfs...)"),
    (EXIT_SIGINT, "interrupted (SIGINT, Ctrl-C)"),
    (EXIT_SIGTERM, "terminated (SIGTERM)"),
)


def markdown() -> str:
    """The README's exit-code table."""
    rows = "".join(f"| {code} | {meaning} |\n" for code, meaning in EXIT_CODES)
    return "| code | meaning |\n|---|---|\n" + rows


def epilog() -> str:
    """The exit-code table at the end of ``euca2kvm --help``."""
    rows = "".join(f"  {code:<4} {meaning.replace('`', '')}\n" for code, meaning in EXIT_CODES)
    return "exit codes:\n" + rows


class Euca2kvmError(Exception):
    """Base of every error the tool raises on purpose."""

    exit_code = EXIT_INTERNAL


class UsageError(Euca2kvmError):
    """Bad arguments or an unknown volume id."""

    exit_code = EXIT_USAGE


class FormatError(Euca2kvmError):
    """Invalid or unsupported on-disk structure.

    ``path`` and ``offset`` say where; the message says what was wrong.
    """

    exit_code = EXIT_FORMAT

    def __init__(self, message: str, path: str | None = None, offset: int | None = None) -> None:
        self.reason = message
        self.path = path
        self.offset = offset
        where = ""
        if path is not None:
            where = f"{path}"
            if offset is not None:
                where += f" at offset {offset}"
            where += ": "
        super().__init__(where + message)


class UnsupportedError(FormatError):
    """A valid structure this version cannot read (e.g. a raid5 LV). Refused per LV."""


class InUseError(Euca2kvmError):
    """A source is held by something else (loop device, dm, process, export)."""

    exit_code = EXIT_IN_USE


class IOFailure(Euca2kvmError):
    """Reading or writing failed (including ENOSPC)."""

    exit_code = EXIT_IO


class VerifyError(Euca2kvmError):
    """A digest or comparison did not match."""

    exit_code = EXIT_VERIFY


class ToolError(Euca2kvmError):
    """An external program failed or timed out."""

    exit_code = EXIT_TOOL


class Interrupted(Euca2kvmError):
    """The user interrupted the operation."""

    exit_code = EXIT_SIGINT


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        sys.stdout.write(markdown())
    elif sys.argv[1:] == ["--epilog"]:
        sys.stdout.write(epilog())
    else:
        sys.exit(f"usage: python -m {__spec__.name if __spec__ else 'euca2kvm.errors'} --markdown | --epilog")
