# SPDX-License-Identifier: Apache-2.0
"""Typed errors. Each class carries the process exit code the CLI maps it to.

Exit codes (also printed by ``euca2kvm --help`` and listed in the README):

    0   success
    1   unexpected internal error (a bug: please report it with the traceback)
    2   usage error (bad arguments, unknown volume id)
    3   input format error (a container, PV, metadata or guest structure is invalid or unsupported)
    4   source in use (loop device, device-mapper, open file, tgt target) and no --force
    5   I/O error (read, write, no space left)
    6   verification failed (a digest or comparison did not match)
    7   external tool failed or timed out (qemu-img, qemu, psql...)
    130 interrupted (SIGINT); 143 terminated (SIGTERM)
"""

from __future__ import annotations

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
