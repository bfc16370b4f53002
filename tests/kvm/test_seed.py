# SPDX-License-Identifier: Apache-2.0
"""NoCloud seed: byte-identical rebuilds, readable by isoinfo (an independent ISO reader) and pycdlib, YAML
that cloud-init's parser reads back to exactly the recorded values, hostile values kept as data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _env import missing
from euca2kvm.errors import UsageError
from euca2kvm.kvm.seed import Seed, StaticNetwork, build_seed, contents, read_seed

TOOL_TIMEOUT = 30  # isoinfo on a 70 KiB image answers in milliseconds
KEY = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDtest 000123456789@eucalyptus.ops-key"
SEED = Seed("i-1a2b3c4d", "euca-172-16-4-21", [KEY], "d0:0d:1a:2b:3c:4d")


def _yaml() -> object:
    try:
        import yaml
    except ImportError:
        missing("PyYAML (what cloud-init parses its seed with) is not installed")
    return yaml


def test_same_input_same_bytes_across_time_and_timezones(tmp_path: Path) -> None:
    first = build_seed(SEED)
    time.sleep(1.1)  # a second later: any build-time stamp would differ
    assert build_seed(SEED) == first
    script = ("import sys; from euca2kvm.kvm.seed import Seed, build_seed; "
              f"sys.stdout.buffer.write(build_seed(Seed({SEED.instance_id!r}, {SEED.hostname!r}, [{KEY!r}], "
              f"{SEED.mac!r})))")
    for tz in ("UTC", "America/New_York", "Asia/Kolkata"):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=TOOL_TIMEOUT,
                             env={**os.environ, "TZ": tz}, check=True).stdout
        assert out == first, tz
    assert build_seed(Seed("i-1a2b3c4e", SEED.hostname, [KEY], SEED.mac)) != first


def test_isoinfo_reads_label_names_and_contents(tmp_path: Path) -> None:
    if shutil.which("isoinfo") is None:
        missing("isoinfo not installed (Debian genisoimage)")
    iso = tmp_path / "seed.iso"
    iso.write_bytes(build_seed(SEED))
    info = subprocess.run(["isoinfo", "-d", "-i", str(iso)], capture_output=True, text=True,
                          timeout=TOOL_TIMEOUT, check=True).stdout
    assert "Volume id: cidata" in info and "Joliet" in info and "Rock Ridge" in info
    listing = subprocess.run(["isoinfo", "-R", "-l", "-i", str(iso)], capture_output=True, text=True,
                             timeout=TOOL_TIMEOUT, check=True).stdout
    names = {line.split()[-1] for line in listing.splitlines() if line.startswith("-r")}
    assert names == {"meta-data", "user-data", "network-config"}
    assert "Jan  1 2000" in listing  # SEED_EPOCH, not the build time
    for name, data in contents(SEED).items():
        got = subprocess.run(["isoinfo", "-R", "-i", str(iso), "-x", f"/{name}"], capture_output=True,
                             timeout=TOOL_TIMEOUT, check=True).stdout
        assert got == data, name
    assert read_seed(iso.read_bytes()) == contents(SEED)


def test_yaml_is_exactly_the_recorded_values() -> None:
    yaml = _yaml()
    files = contents(SEED)
    meta = yaml.safe_load(files["meta-data"])  # type: ignore[attr-defined]
    assert meta == {"instance-id": "i-1a2b3c4d", "local-hostname": "euca-172-16-4-21", "public-keys": [KEY]}
    net = yaml.safe_load(files["network-config"])  # type: ignore[attr-defined]
    assert net == {"version": 2, "ethernets": {"id0": {"match": {"macaddress": "d0:0d:1a:2b:3c:4d"},
                                                        "dhcp4": True}}}
    user = files["user-data"]
    assert user.startswith(b"#cloud-config\n")
    assert yaml.safe_load(user) == {}  # type: ignore[attr-defined]  # nothing that provisions again


def test_replayed_user_data_and_static_network() -> None:
    yaml = _yaml()
    original = b"#!/bin/sh\necho provisioned > /root/first-boot\n"
    seed = Seed("i-1a2b3c4d", "web1", [], None, user_data=original,
                static=StaticNetwork("172.16.4.21", 24, "172.16.4.1"), set_name="eth0")
    files = read_seed(build_seed(seed))
    assert files["user-data"] == original
    meta = yaml.safe_load(files["meta-data"])  # type: ignore[attr-defined]
    assert "public-keys" not in meta
    eth = yaml.safe_load(files["network-config"])["ethernets"]["id0"]  # type: ignore[attr-defined]
    assert eth == {"match": {"name": "e*"}, "set-name": "eth0", "dhcp4": False, "addresses": ["172.16.4.21/24"],
                   "routes": [{"to": "0.0.0.0/0", "via": "172.16.4.1"}]}


def test_hostile_values_stay_values() -> None:
    yaml = _yaml()
    evil_key = 'ssh-rsa AAAA x" instance-id: pwned'  # quotes and YAML syntax; newlines are refused (below)
    seed = Seed("i-1a2b3c4d", "h: {x: 1} #ü", [evil_key, "ssh-ed25519 AAAA ü'\"\\"])
    meta = yaml.safe_load(contents(seed)["meta-data"])  # type: ignore[attr-defined]
    assert meta == {"instance-id": "i-1a2b3c4d", "local-hostname": "h: {x: 1} #ü",
                    "public-keys": [evil_key, "ssh-ed25519 AAAA ü'\"\\"]}


@pytest.mark.parametrize("kwargs", [
    {"instance_id": ""}, {"instance_id": "i-1\nx"}, {"hostname": "a\x1b[31m"}, {"public_keys": ["a\nb"]},
    {"user_data": b"x" * ((1 << 20) + 1)}, {"public_keys": ["k"] * 65},
])
def test_refused(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"instance_id": "i-1", "hostname": "h"}
    args.update(kwargs)
    with pytest.raises(UsageError):
        Seed(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("address", "prefix", "gateway"), [("x", 24, None), ("10.0.0.1", 33, None),
                                                            ("10.0.0.1", 24, "gw")])
def test_static_network_refused(address: str, prefix: int, gateway: str | None) -> None:
    with pytest.raises(UsageError):
        StaticNetwork(address, prefix, gateway)
