# SPDX-License-Identifier: Apache-2.0
"""Helpers shared by the commands: consoles, sources, JSON output."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import IOFailure, UsageError
from ..eucalyptus.discovery import ID_RE, VOLUMES_DIR, Discovery, Note, Volume, discover
from ..eucalyptus.inuse import Holder
from ..export.digest import DEFAULT, OPTIONS, Algorithm
from ..rbd import names as rbd_names
from .console import LazyConsole, escape

if TYPE_CHECKING:
    from ..eucalyptus import san
    from ..rbd import image as rbd_image

# Defaults of the libvirt domain and boot test options, here so that building a command's parser
# imports no QEMU or libvirt code. The boot timeout equals kvm.boottest.DEFAULT_TIMEOUT (tested).
DEFAULT_DOMAIN_MEMORY_MIB = 1024  # a small-instance default; export-instance uses the VM type's
DEFAULT_VCPUS = 1
DEFAULT_BOOT_TIMEOUT = 60.0

E = TypeVar("E", bound=Exception)

console = LazyConsole()
console_err = LazyConsole(stderr=True)
esc = escape


def add_sources(p: argparse.ArgumentParser) -> None:
    add_ssh_args(p)
    p.add_argument("--source", "-s", action="append", metavar="PATH",
                   help=f"volumes directory, container file, block device, or rbd:POOL for the images of a Ceph "
                        f"pool (repeatable; default {VOLUMES_DIR})")
    add_ceph_args(p)
    add_device_args(p)


# --device VOLUME_ID=DEVICE as parsed (volume id -> spec), for discover_sources and resolve_volumes.
_device_specs: dict[str, san.DeviceSpec] = {}


class _DeviceOption(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from ..eucalyptus import san  # imported only when --device is given: it pulls in the planner

        try:
            spec = san.parse_device(str(values))
        except UsageError as e:
            parser.error(str(e))  # exit 2, with the usage line
        if spec.volume_id in _device_specs:
            parser.error(f"--device {spec.volume_id} given twice")
        _device_specs[spec.volume_id] = spec
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), values])


def add_device_args(p: argparse.ArgumentParser) -> None:
    _device_specs.clear()  # parsers are built once per run, before parsing
    p.add_argument("--device", action=_DeviceOption, metavar="VOLUME_ID=DEVICE",
                   help="a SAN volume's LUN attached read-only on this host, exported under its volume id "
                        "(repeatable), e.g. vol-0a1b2c3d=/dev/sdc; `plan` says which LUN and target to attach")


def device_ids() -> set[str]:
    return set(_device_specs)


def add_device_volumes(d: Discovery) -> None:
    """The ``--device`` LUNs as volumes; one replaces a volume of the same id found in the sources."""
    from ..eucalyptus import san

    for vid, spec in _device_specs.items():
        vol = san.device_volume(spec)
        if any(v.id == vid for v in d.volumes):
            d.warnings.append(f"{vid}: --device {spec.path} is used, not the volume of this id in the sources")
            d.volumes = [v for v in d.volumes if v.id != vid]
        if san.is_read_only(vol.files[0]) is False:
            d.warnings.append(f"{vid}: {spec.path} is not set read-only (blockdev --setro {spec.path}); it is "
                              "only read")
        d.volumes.append(vol)
    d.volumes.sort(key=lambda v: (v.id, v.name))


# The --ceph-* options as parsed, for discover_sources (which commands call with their sources only).
_ceph_options: dict[str, str] = {}


class _CephOption(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        _ceph_options[self.dest] = values


def add_ceph_args(p: argparse.ArgumentParser) -> None:
    _ceph_options.clear()  # parsers are built once per run, before parsing
    g = p.add_argument_group("Ceph RBD sources (--source rbd:POOL; read-only, a read-only cephx key is enough)")
    g.add_argument("--ceph-conf", action=_CephOption, default=rbd_names.DEFAULT_CONF, metavar="PATH",
                   help=f"Ceph configuration (default {rbd_names.DEFAULT_CONF})")
    g.add_argument("--ceph-id", action=_CephOption, default=rbd_names.DEFAULT_ID, metavar="NAME",
                   help=f"cephx user without 'client.' (default {rbd_names.DEFAULT_ID}, storage.cephuser's default)")
    g.add_argument("--ceph-keyring", action=_CephOption, metavar="PATH",
                   help="the user's keyring (default /etc/ceph/ceph.client.<id>.keyring)")


def set_ceph_defaults(user: str | None, conf: str | None, keyring: str | None) -> None:
    """Ceph settings from an inventory (ceph_rbd_info), for the --ceph-* options not given."""
    for k, v in (("ceph_id", user), ("ceph_conf", conf), ("ceph_keyring", keyring)):
        if v:
            _ceph_options.setdefault(k, v)


def ceph_options() -> rbd_image.CephOptions:
    from ..rbd import image as rbd_image  # librbd (ctypes) only for rbd: sources

    o = _ceph_options
    return rbd_image.CephOptions(o.get("ceph_conf", rbd_names.DEFAULT_CONF), o.get("ceph_id", rbd_names.DEFAULT_ID),
                                 o.get("ceph_keyring"))


# Ceph connections opened for this run's rbd: sources; closed by the command line's main after the
# command returned (its worker threads joined), images first, then pools, then the connection.
_open_clusters: list[Any] = []


def close_backends() -> None:
    while _open_clusters:
        _open_clusters.pop().close()


def add_rbd_volumes(d: Discovery, sources: list[str], only: list[str] | None = None) -> None:
    """The images of ``rbd:POOL`` sources as volumes (``rbd``, ``rbd-snapshot``) whose bytes come from
    their block source; ``del…`` and images not named like a volume are notes; watchers make a volume in use.
    ``only``: the volume ids a command named; the other images' facts are not read (rbd.sources.images)."""
    from ..rbd import image as rbd_image
    from ..rbd import sources as rbd_sources

    cluster = rbd_image.Cluster(ceph_options())  # open for the rest of the run: the volumes read through it
    _open_clusters.append(cluster)  # closed by close_backends() when the command returns
    named = only if only and all(ID_RE.match(i) for i in only) else None
    for ref in rbd_sources.images(cluster, [rbd_names.pool_name(src) for src in sources], named):
        if ref.deleted or not ID_RE.match(ref.image):
            why = ("a deleted image Eucalyptus renamed (it still has clones); read only as their parent"
                   if ref.deleted else "not named like a Eucalyptus volume or snapshot")
            d.notes.append(Note(ref.spec, "ignored", why))
            continue
        d.volumes.append(Volume(
            id=ref.image, kind="rbd-snapshot" if ref.image.startswith("snap-") else "rbd", size=ref.facts.size,
            files=[], segment_types=["rbd-clone" if ref.facts.chain else "rbd"],
            in_use=[Holder(ref.spec, f"watched by {w}") for w in ref.facts.watchers], blocks_factory=ref))
    d.volumes.sort(key=lambda v: (v.id, v.name))


# ssh:// sources (remote/); asyncssh is imported only when one is named.
SSH_SCHEME = "ssh://"
# The --ssh-* options as parsed, for discover_sources (which commands call with their sources only).
_ssh_options: dict[str, str] = {}


class _SshOption(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        _ssh_options[self.dest] = values


def add_ssh_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SSH sources (--source ssh://[user@]host[:port]/path; read-only, nothing is installed "
                             "on the host)")
    g.add_argument("--ssh-known-hosts", action=_SshOption, default="~/.ssh/known_hosts", metavar="FILE",
                   help="host keys the source hosts must present; an unknown key is refused")
    g.add_argument("--ssh-identity", action=_SshOption, metavar="FILE",
                   help="private key to log in with (default: the SSH agent and ~/.ssh/id_*)")


def configure_ssh() -> None:
    """The --ssh-* options, for every SSH connection of the run (sources, the database tunnel)."""
    from ..remote import ssh

    ssh.OPTIONS = ssh.Options(known_hosts=_ssh_options.get("ssh_known_hosts", ssh.DEFAULT_KNOWN_HOSTS),
                              identity=_ssh_options.get("ssh_identity"))


def add_ssh_volumes(d: Discovery, urls: list[str]) -> None:
    """The volumes of ``ssh://`` sources, added to ``d``."""
    from ..remote import sources as ssh_sources

    configure_ssh()
    r = ssh_sources.discover_all(urls)
    d.volumes.extend(r.volumes)
    d.notes.extend(r.notes)
    d.warnings.extend(r.warnings)
    d.unusable.update(r.unusable)
    d.volumes.sort(key=lambda v: (v.id, v.name))


def find_volume(d: Discovery, ident: str) -> Volume:
    if ident.startswith(SSH_SCHEME):
        from ..remote import sources as ssh_sources

        return ssh_sources.find_url(d, ident)
    return d.find(ident)


def add_digest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sha256", action="store_true", help="also record the plain sha256 of each disk")
    p.add_argument("--block-digest", choices=sorted(OPTIONS), default=DEFAULT.option,
                   help=f"hash of the recorded block digest (default {DEFAULT.option}; sha256 is about 2.5x "
                        "slower)")


def digest_algorithm(args: argparse.Namespace) -> Algorithm:
    return OPTIONS[args.block_digest]


def sources(args: argparse.Namespace) -> list[str]:
    return list(args.source or [VOLUMES_DIR])


def discover_sources(paths: list[str], quiet: bool = False, only: list[str] | None = None) -> Discovery:
    """The volumes of ``paths``; ``only``: the ids a command named (backends that can, RBD, read the
    facts of those alone)."""
    remote = [p for p in paths if p.startswith(SSH_SCHEME)]
    paths = [p for p in paths if not p.startswith(SSH_SCHEME)]
    rbd = [p for p in paths if rbd_names.is_rbd(p)]
    rest = [p for p in paths if not rbd_names.is_rbd(p)]
    d = discover(rest) if rest or not rbd else Discovery()
    if rbd:
        add_rbd_volumes(d, rbd, only)
    if remote:
        add_ssh_volumes(d, remote)
    if _device_specs:
        add_device_volumes(d)
    if not quiet:
        for w in d.warnings:
            console_err.print(f"[yellow]warning:[/] {esc(w)}")
    return d


def is_path_id(ident: str) -> bool:
    """Does a volume ID name a file system object (a container path) rather than a volume id or VG/LV?"""
    return ident.startswith(SSH_SCHEME) or os.path.lexists(ident)


def path_id_source(ident: str) -> str:
    """A container path given as an ID, checked: what is wrong with anything that is not a file (a
    directory, a character device, a dangling link) is said here, naming it (exit 2)."""
    if ident.startswith(SSH_SCHEME):
        return ident  # checked on its host when scanned
    try:
        mode = os.stat(ident).st_mode
    except OSError as e:
        raise UsageError(f"{ident}: {e.strerror}") from e
    if stat.S_ISDIR(mode):
        raise UsageError(f"{ident} is a directory, not a volume: give a directory with --source and name the "
                         "volumes in it")
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        what = "a character device" if stat.S_ISCHR(mode) else "not a regular file"
        raise UsageError(f"{ident} is {what}, not a container file, snapshot file or block device")
    return ident


def resolve_volumes(ids: list[str], source_args: list[str] | None, quiet: bool = False
                    ) -> tuple[Discovery, list[Volume]]:
    """The one rule for volume IDs, for every command that takes them.

    An ID that names an existing path is a container (or snapshot) file or block device: it is a source
    itself, scanned with the ``--source`` paths. Any other ID (a volume id, a container's file name,
    ``VG/LV``) is looked up in the ``--source`` paths, by default the Eucalyptus volumes directory, which
    is therefore scanned only when such an ID is given or ``--source`` names it. An ID that matches
    nothing, or a file that is not a volume, fails with its own error before anything is written.
    """
    named = [path_id_source(i) for i in ids if is_path_id(i)]
    by_name = [i for i in ids if not is_path_id(i) and i not in _device_specs]  # --device ids need no scan
    paths = list(source_args or ([VOLUMES_DIR] if by_name or not ids else []))
    d = discover_sources(paths + [p for p in named if p not in paths], quiet=quiet, only=by_name or None)
    return d, [find_volume(d, i) for i in ids]


def output_dir(path: str) -> Path:
    """``-o OUTDIR``: an existing directory or one created now; anything else is a usage error (exit 2)."""
    out = Path(path)
    if os.path.lexists(out) and not out.is_dir():
        raise UsageError(f"-o {path} exists and is not a directory: OUTDIR must be a directory (it is created "
                         "when missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IOFailure(f"cannot create {out}: {e.strerror}") from e
    if not os.access(out, os.W_OK):
        raise IOFailure(f"{out} is not writable")
    return out


def without_id(e: E, vid: str) -> E:
    """``e`` with a leading ``<vid>: `` dropped from its message, for printers that put the id first
    themselves (no ``vol-x: vol-x: ...``)."""
    if e.args and isinstance(e.args[0], str) and e.args[0].startswith(f"{vid}: "):
        e.args = (e.args[0][len(vid) + 2:], *e.args[1:])
    return e


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()
