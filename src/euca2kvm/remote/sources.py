# SPDX-License-Identifier: Apache-2.0
"""``ssh://[user@]host[:port]/path`` sources: a volumes directory, a container or snapshot file, a DAS
device on a storage controller, scanned and exported without installing or writing anything there.

The path is listed through SFTP (entries by ``lstat``: a symlink in a volumes directory is skipped,
a symlink named explicitly is refused), every file is read through :class:`~.files.RemoteFile`, and
the volumes are built by the same code as for local files (``discovery.from_devices``). Each volume
reads its files through :class:`~.files.RemoteOpener`; the in-use checks run on the host
(:class:`~.hostcheck.RemoteHost`). Files are named by their ``ssh://`` URL everywhere.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable

import asyncssh

from ..errors import Euca2kvmError, IOFailure, UsageError
from ..eucalyptus.cloudinuse import HostState, combine, host_state
from ..eucalyptus.discovery import MAX_DIR_ENTRIES, Discovery, Volume, discover, from_devices
from ..lvm.device import Device
from .files import RemoteFile, RemoteOpener, probe_many
from .hostcheck import RemoteHost
from .ssh import Connection, Target, connect, is_url, parse_url


def _list(conn: Connection, t: Target) -> tuple[list[str], set[str]]:
    """Remote paths to scan and the ones named explicitly (as ``discovery._expand`` does locally)."""
    sftp = conn.sftp()
    name = t.url()
    try:
        real = t.path
        mode = conn.call(sftp.lstat(real), f"cannot stat {t.path}").permissions or 0
        if stat.S_ISLNK(mode):  # a link to the volumes directory is followed, a link to a file is not
            real = conn.call(sftp.realpath(t.path), f"cannot resolve {t.path}")
            mode = conn.call(sftp.stat(real), f"cannot stat {t.path}").permissions or 0
            if not stat.S_ISDIR(mode):
                raise UsageError(f"source {name} is a symbolic link; name the file itself")
    except IOFailure as err:
        raise UsageError(f"source {name}: {err}") from err
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        return [real], {real}
    if not stat.S_ISDIR(mode):
        raise UsageError(f"source {name} is not a directory, regular file or block device")

    async def entries() -> list[asyncssh.SFTPName]:
        out: list[asyncssh.SFTPName] = []
        async for entry in sftp.scandir(real):
            out.append(entry)
            if len(out) > MAX_DIR_ENTRIES:
                break
        return out

    names = conn.call(entries(), f"cannot list {real}")
    if len(names) > MAX_DIR_ENTRIES:
        raise UsageError(f"{name} has more than {MAX_DIR_ENTRIES} entries; not a volumes directory")
    files = []
    for e in sorted(names, key=lambda e: str(e.filename)):
        fn = str(e.filename)
        if fn.startswith(".") or "/" in fn or "\0" in fn:
            continue  # hidden files (our own partial outputs elsewhere), and names no file can have
        m = e.attrs.permissions or 0
        if stat.S_ISREG(m) or stat.S_ISBLK(m):  # readdir's attributes are lstat's: links are skipped
            files.append(f"{real.rstrip('/')}/{fn}")
    return files, set()


def discover_host(urls: list[str], check_in_use: bool = True) -> Discovery:
    """Volumes in ``urls``, all on one host (same user, host and port)."""
    t0 = parse_url(urls[0])
    conn = connect(t0)
    out = Discovery()
    paths: list[str] = []
    explicit: set[str] = set()
    for u in urls:
        files, named = _list(conn, parse_url(u))
        paths.extend(files)
        explicit |= named
    devices: list[Device] = []
    paths = list(dict.fromkeys(paths))
    probes = probe_many(conn, paths)  # one round trip for the whole listing
    for p in paths:
        url = t0.url(p)
        try:
            f = RemoteFile(conn, p, probes[p])
        except Euca2kvmError as e:
            out.warnings.append(f"{url}: {e}")
            out.unusable[url] = e
            continue
        devices.append(Device(url, 0, f.size_probed, reader=f.read))
    d = from_devices(devices, {t0.url(p) for p in explicit}, out, check_in_use, RemoteHost(conn))
    opener = RemoteOpener()
    for v in d.volumes:
        v.opener = opener
    return d


def _host_key(url: str) -> tuple[str | None, str, int]:
    t = parse_url(url)
    return t.user, t.host, t.port


def discover_all(paths: Iterable[str], check_in_use: bool = True) -> Discovery:
    """Local paths through ``discovery.discover``, ``ssh://`` ones per host; one merged result."""
    paths = list(paths)
    local = [p for p in paths if not is_url(p)]
    out = discover(local, check_in_use) if local else Discovery()
    by_host: dict[tuple[str | None, str, int], list[str]] = {}
    for p in paths:
        if is_url(p):
            by_host.setdefault(_host_key(p), []).append(p)
    for urls in by_host.values():
        d = discover_host(urls, check_in_use)
        out.volumes.extend(d.volumes)
        out.notes.extend(d.notes)
        out.warnings.extend(d.warnings)
        out.unusable.update(d.unusable)
    out.volumes.sort(key=lambda v: (v.id, v.name))
    return out


def host_state_for(paths: Iterable[str]) -> HostState:
    """The cloud-level facts (Eucalyptus processes, tgt targets) of the hosts the sources are on:
    this machine for local ones, each ``ssh://`` host asked over its connection."""
    paths = list(paths)
    urls = [p for p in paths if is_url(p)]
    states = [host_state()] if len(urls) < len(paths) or not paths else []
    hosts = {_host_key(u): u for u in urls}
    states += [host_state(host=RemoteHost(connect(parse_url(u)))) for u in hosts.values()]
    return combine(states)


def find_url(d: Discovery, url: str) -> Volume:
    """The volume a container's ``ssh://`` URL names (as ``Discovery.find`` does for a local path)."""
    t = parse_url(url)
    name = t.url()
    hits = [v for v in d.volumes if name in v.files]
    if not hits:
        hits = [v for v in d.volumes if not v.files and v.group is not None and name in v.group.files()]
    if len(hits) > 1:
        hits = [v for v in hits if v.id == t.path.rsplit("/", 1)[-1]] or hits
    if len(hits) == 1:
        return hits[0]
    if name in d.unusable:
        raise d.unusable[name]
    return d.find(name)  # the usual messages: ambiguous, or unknown with close matches
