# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm`` command line: a thin layer that maps arguments to the library and errors to exit codes."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from .. import errors
from ..errors import Euca2kvmError
from . import export_cmd, inspect_cmd, instance_cmd, inventory_cmd, kvm_cmds, plan_cmd, scan_cmd, verify_cmd
from .common import console_err

EPILOG = """exit codes:
  0    success
  2    usage error (bad arguments, unknown volume id)
  3    input format error (invalid or unsupported container, PV, metadata, LV type)
  4    source in use (loop device, device-mapper, open by a process); --force overrides
  5    I/O error (read or write failed, no space left)
  6    verification failed (digest or comparison mismatch)
  7    external tool failed or timed out (qemu-img, qemu)
  1    internal error (a bug)
  130  interrupted (Ctrl-C); 143 terminated
"""

COMMANDS = (scan_cmd, inspect_cmd, export_cmd, verify_cmd, kvm_cmds, inventory_cmd, plan_cmd, instance_cmd)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="euca2kvm",
        description="Export EBS volumes of a Eucalyptus cloud from their LVM container files to disk images "
                    "KVM boots, without root, loop devices or device-mapper, never writing to a source.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in COMMANDS:
        mod.build_parser(sub)
    return p


class _Terminated(BaseException):
    pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    faulthandler.enable()
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(threadName)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        rc: int = args.func(args)
        return rc
    except Euca2kvmError as e:
        console_err.print(f"[bold red]euca2kvm: error:[/] {_escape(str(e))}", highlight=False)
        logging.getLogger("euca2kvm").debug("details", exc_info=True)
        return e.exit_code
    except KeyboardInterrupt:
        console_err.print("euca2kvm: interrupted", highlight=False)
        return errors.EXIT_SIGINT
    except _Terminated:
        console_err.print("euca2kvm: terminated", highlight=False)
        return errors.EXIT_SIGTERM
    except BrokenPipeError:
        return errors.EXIT_IO


def _escape(s: str) -> str:
    from rich.markup import escape

    return escape(s)


def run() -> None:
    sys.exit(main())
