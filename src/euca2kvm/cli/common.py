# SPDX-License-Identifier: Apache-2.0
"""Helpers shared by the commands: consoles, sources, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..eucalyptus.discovery import VOLUMES_DIR, Discovery, discover
from ..export.digest import DEFAULT, OPTIONS, Algorithm
from .console import LazyConsole, escape

# Defaults of the libvirt domain and boot test options, here so that building a command's parser
# imports no QEMU or libvirt code. The boot timeout equals kvm.boottest.DEFAULT_TIMEOUT (tested).
DEFAULT_DOMAIN_MEMORY_MIB = 1024  # a small-instance default; export-instance uses the VM type's
DEFAULT_VCPUS = 1
DEFAULT_BOOT_TIMEOUT = 60.0

console = LazyConsole()
console_err = LazyConsole(stderr=True)
esc = escape


def add_sources(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", "-s", action="append", metavar="PATH",
                   help=f"volumes directory, container file or block device (repeatable; default {VOLUMES_DIR})")


def add_digest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sha256", action="store_true", help="also record the plain sha256 of each disk")
    p.add_argument("--block-digest", choices=sorted(OPTIONS), default=DEFAULT.option,
                   help=f"hash of the recorded block digest (default {DEFAULT.option}; sha256 is about 2.5x "
                        "slower)")


def digest_algorithm(args: argparse.Namespace) -> Algorithm:
    return OPTIONS[args.block_digest]


def sources(args: argparse.Namespace) -> list[str]:
    return list(args.source or [VOLUMES_DIR])


def discover_sources(paths: list[str], quiet: bool = False) -> Discovery:
    d = discover(paths)
    if not quiet:
        for w in d.warnings:
            console_err.print(f"[yellow]warning:[/] {esc(w)}")
    return d


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()
