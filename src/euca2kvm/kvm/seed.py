# SPDX-License-Identifier: Apache-2.0
"""A cloud-init NoCloud seed: an ISO 9660 image labelled ``cidata`` (Joliet + Rock Ridge) written by pycdlib.

Files: ``meta-data`` (``instance-id`` = the Eucalyptus instance id, so cloud-init sees the *same*
instance and runs no per-instance module again: host keys, users and hostname stay; ``local-hostname``;
``public-keys``), ``user-data`` (an empty ``#cloud-config`` unless the original user-data is replayed on
purpose: it already ran in the cloud) and ``network-config`` v2 matching the recorded MAC (DHCP, or the
recorded address with ``static``). With a NoCloud source present ds-identify picks it, so the guest
never waits for the EC2 metadata service.

Same input, same bytes: every timestamp pycdlib writes is pinned to :data:`SEED_EPOCH` in UTC, and
files are added in a fixed order. Every scalar goes into the YAML as a JSON string (JSON is valid YAML),
so no value from the cloud can add keys.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import threading
import time as _time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from ..errors import ToolError, UsageError

VOLUME_ID = "cidata"  # the label cloud-init's NoCloud datasource looks for
# 2000-01-01T00:00:00Z: any fixed instant works; a round one shows in isoinfo that it is not a build time.
SEED_EPOCH = 946684800.0
MAX_USER_DATA = 1 << 20  # matches the inventory's bound; EC2 itself allows 16 KiB
MAX_KEYS = 64  # an instance has one EC2 key; a bound for hostile input
# ISO 9660 level-3 names (8.3, upper case) for readers without Rock Ridge/Joliet; cloud-init reads the RR names.
FILES = (("meta-data", "/METADATA.;1"), ("user-data", "/USERDATA.;1"), ("network-config", "/NETWORKC.;1"))
_PYCDLIB_MODULES = ("pycdlib.pycdlib", "pycdlib.headervd", "pycdlib.dates", "pycdlib.utils", "pycdlib.dr",
                    "pycdlib.rockridge")
_lock = threading.Lock()  # pycdlib's clock is pinned per module while one seed is built


@dataclass(frozen=True)
class StaticNetwork:
    address: str  # the recorded private address
    prefix: int
    gateway: str | None = None

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_interface(f"{self.address}/{self.prefix}")
            if self.gateway is not None:
                ipaddress.ip_address(self.gateway)
        except ValueError as e:
            raise UsageError(f"static network: {e}") from None


@dataclass(frozen=True)
class Seed:
    instance_id: str
    hostname: str
    public_keys: list[str] = field(default_factory=list)
    mac: str | None = None
    user_data: bytes | None = None  # the instance's own user-data, replayed; None: an empty #cloud-config
    static: StaticNetwork | None = None
    set_name: str | None = None  # interface name to give the matched NIC (None: keep the kernel's)

    def __post_init__(self) -> None:
        for what, value in (("instance id", self.instance_id), ("hostname", self.hostname)):
            if not value or len(value) > 255 or any(ord(c) < 0x20 or c == "\x7f" for c in value):
                raise UsageError(f"seed: unusable {what} {value!r}")
        if len(self.public_keys) > MAX_KEYS or any("\n" in k or "\r" in k for k in self.public_keys):
            raise UsageError("seed: public keys must be single lines")
        if self.user_data is not None and len(self.user_data) > MAX_USER_DATA:
            raise UsageError(f"seed: user-data larger than {MAX_USER_DATA} bytes")


def _q(value: str) -> str:
    """A YAML scalar that is exactly ``value`` (a JSON string; non-ASCII escaped)."""
    return json.dumps(value, ensure_ascii=True)


def meta_data(seed: Seed) -> bytes:
    lines = [f"instance-id: {_q(seed.instance_id)}", f"local-hostname: {_q(seed.hostname)}"]
    if seed.public_keys:
        lines.append("public-keys:")
        lines += [f"  - {_q(k)}" for k in seed.public_keys]
    return ("\n".join(lines) + "\n").encode()


def user_data(seed: Seed) -> bytes:
    if seed.user_data is not None:
        return seed.user_data
    return (f"#cloud-config\n# NoCloud seed for {seed.instance_id} by euca2kvm: identity only. The instance's "
            "own user-data already ran in the cloud and is not replayed.\n{}\n").encode()


def network_config(seed: Seed) -> bytes:
    lines = ["version: 2", "ethernets:", "  id0:"]
    if seed.mac is not None:
        lines += ["    match:", f"      macaddress: {_q(seed.mac)}"]
    else:  # no recorded MAC: the first Ethernet-named interface
        lines += ["    match:", f"      name: {_q('e*')}"]
    if seed.set_name is not None:
        lines.append(f"    set-name: {_q(seed.set_name)}")
    if seed.static is None:
        lines.append("    dhcp4: true")
    else:
        lines += ["    dhcp4: false", "    addresses:", f"      - {_q(f'{seed.static.address}/{seed.static.prefix}')}"]
        if seed.static.gateway is not None:
            lines += ["    routes:", f"      - to: {_q('0.0.0.0/0')}", f"        via: {_q(seed.static.gateway)}"]
    return ("\n".join(lines) + "\n").encode()


def contents(seed: Seed) -> dict[str, bytes]:
    """The seed's files by name, in the order they are written."""
    return {"meta-data": meta_data(seed), "user-data": user_data(seed), "network-config": network_config(seed)}


def _fixed_clock() -> Any:
    """A stand-in for the ``time`` module inside pycdlib: the clock stopped at SEED_EPOCH, in UTC."""
    return SimpleNamespace(
        time=lambda: SEED_EPOCH,
        localtime=lambda t=None: _time.gmtime(SEED_EPOCH if t is None else t),
        gmtime=lambda t=None: _time.gmtime(SEED_EPOCH if t is None else t),
        strftime=_time.strftime,
        mktime=_time.mktime,
        timezone=0,
        altzone=0,
        daylight=0,
    )


@contextmanager
def _pinned_pycdlib_clock() -> Iterator[None]:
    import importlib

    with _lock:
        modules = [importlib.import_module(name) for name in _PYCDLIB_MODULES]
        saved = [(m, m.__dict__["time"]) for m in modules if "time" in m.__dict__]
        clock = _fixed_clock()
        try:
            for m, _ in saved:
                m.time = clock  # type: ignore[attr-defined]
            yield
        finally:
            for m, original in saved:
                m.time = original  # type: ignore[attr-defined]


def build_seed(seed: Seed) -> bytes:
    """The ISO image bytes (a few hundred KiB at most: the files are small and bounded)."""
    try:
        import pycdlib
    except ImportError as e:  # pragma: no cover - a runtime dependency
        raise ToolError("writing a NoCloud seed needs pycdlib: pip install pycdlib") from e
    files = contents(seed)
    out = io.BytesIO()
    with _pinned_pycdlib_clock():
        iso = pycdlib.PyCdlib()
        iso.new(interchange_level=3, vol_ident=VOLUME_ID, joliet=3, rock_ridge="1.09",
                sys_ident="LINUX", app_ident_str="EUCA2KVM")
        for name, iso_name in FILES:
            data = files[name]
            iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path=f"/{name}",
                       file_mode=0o100444)
        iso.write_fp(out)
        iso.close()
    return out.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_seed(data: bytes) -> dict[str, bytes]:
    """The files of a seed image by their Rock Ridge names (the reading side of the tests and verify)."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        out: dict[str, bytes] = {}
        for name, _ in FILES:
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            out[name] = buf.getvalue()
        return out
    finally:
        iso.close()
