# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm`` command line: a thin layer that maps arguments to the library and errors to exit codes."""

from __future__ import annotations

import argparse
import faulthandler
import gc
import importlib
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType, ModuleType, TracebackType
from typing import Any, NoReturn

from .. import errors
from ..errors import Euca2kvmError
from .common import close_backends, console_err, esc
from .console import LINE_BREAK, VisibleFormatter, visible

EPILOG = errors.epilog()  # the one exit-code table, also the README's

# Command name -> module defining it. Only the named command's module is imported for a run
# (the others pull in qemu, libvirt, database and API code): start-up time counts when a
# command's own work takes a second.
COMMANDS = {
    "scan": "scan_cmd", "inspect": "inspect_cmd", "export": "export_cmd", "verify": "verify_cmd",
    "libvirt": "kvm_cmds", "boot-test": "kvm_cmds", "inventory": "inventory_cmd", "plan": "plan_cmd",
    "export-instance": "instance_cmd", "report": "report_cmd", "manifest": "manifest_cmd",
}


def _modules(argv: Sequence[str]) -> list[ModuleType]:
    """The command modules a parser for ``argv`` needs: the named command's, or all (for --help)."""
    names = list(dict.fromkeys(COMMANDS.values()))
    first = next((a for a in argv if not a.startswith("-")), None)
    if first in COMMANDS:
        names = [COMMANDS[first]]
    elif first is None and "--version" in argv and not {"-h", "--help"} & set(argv):
        names = []  # --version prints and exits before any command is parsed
    return [importlib.import_module(f"{__name__}.{n}") for n in names]


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless its help says it already or there is none worth
    saying (an unset option, a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        d = action.default
        if (not action.option_strings or "default" in text or d is None or d is argparse.SUPPRESS
                or isinstance(d, bool) or d == []):
            return text
        return f"{text} (default %(default)s)".lstrip()


class _TopFormatter(argparse.RawDescriptionHelpFormatter, _DefaultsFormatter):
    """The top-level help: its epilog (the exit code table) is kept as written."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("euca2kvm")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class _VersionAction(argparse._VersionAction):
    """``--version``, looked up only when asked for: importlib.metadata costs every other run its import."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        self.version = f"%(prog)s {_version()}"
        super().__call__(parser, namespace, values, option_string)


class _Parser(argparse.ArgumentParser):
    """argparse's parser (subcommands inherit it) with usage errors escaped: they quote arguments,
    which a shell glob over a volumes directory can fill with hostile file names. Help shows defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        super().error(visible(message))


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    p = _Parser(
        prog="euca2kvm",
        description="Export EBS volumes of a Eucalyptus cloud from their LVM container files to disk images "
                    "KVM boots, without root, loop devices or device-mapper, never writing to a source.",
        epilog=EPILOG,
        formatter_class=_TopFormatter,
    )
    p.add_argument("--version", action=_VersionAction)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in _modules(sys.argv[1:] if argv is None else argv):
        mod.build_parser(sub)
    return p


class _Terminated(BaseException):
    pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


def _excepthook(et: type[BaseException], ev: BaseException, tb: TracebackType | None) -> None:
    """Python's report of an internal error (exit 1), escaped: exception messages quote data."""
    import traceback

    sys.stderr.write(visible("".join(traceback.format_exception(et, ev, tb)), LINE_BREAK))


def main(argv: Sequence[str] | None = None) -> int:
    faulthandler.enable()
    sys.excepthook = _excepthook
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not gc.isenabled():  # start-up ran without the collector (run, __main__): back on for the command
        start_up_done()
    level = logging.WARNING - 10 * min(args.verbose, 2)
    handler = logging.StreamHandler()
    handler.setFormatter(VisibleFormatter("%(levelname)s %(threadName)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        rc: int = args.func(args)
        return rc
    except Euca2kvmError as e:
        console_err.print(f"[bold red]euca2kvm: error:[/] {esc(str(e))}", highlight=False)
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
    finally:
        close_backends()  # here, not in atexit: the connection outlives no reader and no interpreter state


def start_up_done() -> None:
    """The collector on again, with what start-up made (modules, classes, the parser: alive until the exit)
    moved out of its reach, so that the command's collections look at the command's objects only."""
    gc.freeze()
    gc.enable()


def run() -> None:
    # Start-up (the imports, the parser) makes ~17k tracked objects that live until the exit and no
    # garbage worth collecting, yet ran 33 collections in an RBD export (16-120 ms on this machine under
    # load). ``python -m euca2kvm`` turns the collector off before importing the command line, this
    # before building the parser; main() turns it back on once the arguments are parsed.
    gc.disable()
    rc = main()
    # The interpreter's exit would then collect every object the run imported or made, several passes
    # over all of them: 87 ms of the exit of an RBD export on this 2-core machine under load (23 ms
    # frozen), more than its copy of a small volume. Nothing needs those passes: the command closed what
    # it opened, modules are still cleared, atexit handlers and weakref finalizers still run; only
    # cyclic garbage is left to the OS.
    gc.freeze()
    sys.exit(rc)
