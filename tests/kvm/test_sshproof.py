# SPDX-License-Identifier: Apache-2.0
"""The SSH proof's parts that need no guest: fingerprints against ssh-keygen, key-file parsing, the guest
fact parser on real output, escaping, the verdict; and a domain that never boots: exit 6 with the console
tail, QEMU stopped, nothing written. The real login is proven in test_usable_guest.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _env import need_tools
from euca2kvm.cli.console import LINE_BREAK, visible
from euca2kvm.kvm.guestfacts import GuestFacts, fingerprint, parse_public_keys
from euca2kvm.kvm.sshproof import SshProof, _conclude

TOOL_TIMEOUT = 120

# The fact script's output in the test guest (Debian 12, cloud-init 22.4.2), second boot of i-3f2a91c0 with
# its NoCloud seed; host key material shortened to keys made below.
FACTS = """@@euca2kvm:hostname
euca-172-16-9-30
@@euca2kvm:interfaces
ens3 d0:0d:3f:2a:91:c0 up
@@euca2kvm:cloud-init
status: done
boot_status_code: enabled-by-generator
last_update: Thu, 01 Jan 1970 00:01:08 +0000
detail:
DataSourceNoCloud [seed=/dev/sr0][dsmode=net]
@@euca2kvm:instance-id
i-3f2a91c0
@@euca2kvm:result
{"v1": {"datasource": "DataSourceNoCloud [seed=/dev/sr0][dsmode=net]", "errors": []}}
@@euca2kvm:host-keys
{keys}
@@euca2kvm:end
"""


def keygen(tmp: Path, kind: str) -> Path:
    need_tools("ssh-keygen")
    path = tmp / f"id_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True, timeout=TOOL_TIMEOUT)
    return path


def test_fingerprint_is_ssh_keygens(tmp_path: Path) -> None:
    for kind in ("ed25519", "ecdsa", "rsa"):
        pub = keygen(tmp_path, kind).with_suffix(".pub")
        ours = [fingerprint(b) for _, b in parse_public_keys(pub.read_text())]
        theirs = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True,
                                timeout=TOOL_TIMEOUT).stdout.split()[1]
        assert ours == [theirs]


def test_public_key_lines(tmp_path: Path) -> None:
    pub = keygen(tmp_path, "ed25519").with_suffix(".pub").read_text().split()
    text = "\n".join([
        f"{pub[0]} {pub[1]} root@guest",  # .pub
        f"[127.0.0.1]:2222 {pub[0]} {pub[1]}",  # known_hosts
        "# comment", "ssh-ed25519 not*base64", "ssh-rsa", "", "\x1b[2J garbage",
    ])
    assert parse_public_keys(text) == [(pub[0], pub[1])] * 2


def test_guest_facts_from_real_output(tmp_path: Path) -> None:
    keys = "\n".join(keygen(tmp_path, k).with_suffix(".pub").read_text().strip() for k in ("ed25519", "ecdsa"))
    f = GuestFacts.parse(FACTS.replace("{keys}", keys))
    assert f.hostname == "euca-172-16-9-30"
    assert f.interfaces == [{"name": "ens3", "mac": "d0:0d:3f:2a:91:c0", "state": "up"}]
    assert (f.cloud_init_status, f.instance_id, f.datasource) == ("done", "i-3f2a91c0", "NoCloud")
    assert f.cloud_init_detail == "DataSourceNoCloud [seed=/dev/sr0][dsmode=net]"
    assert [k["type"] for k in f.host_keys] == ["ssh-ed25519", "ecdsa-sha2-nistp256"]
    # cloud-init disabled (no seed): no result.json, no datasource
    off = GuestFacts.parse("@@euca2kvm:cloud-init\nstatus: disabled\n@@euca2kvm:result\n@@euca2kvm:end\n")
    assert off.cloud_init_status == "disabled" and off.datasource is None and off.instance_id is None
    # hostile output: unbalanced sections, junk JSON, no crash
    junk = GuestFacts.parse("@@euca2kvm:result\n{not json\n@@euca2kvm:interfaces\nx\n\x00\n")
    assert junk.datasource is None and junk.interfaces == []


def test_guest_text_is_escaped_by_the_output_layer() -> None:
    """The proof prints guest text raw through the console, which escapes it (tabs too; lines kept)."""
    assert visible("a\x1b[2Jb\x07\tc\nd\x9b", LINE_BREAK) == "a\\x1b[2Jb\\x07\\x09c\nd\\x9b"


def test_verdict() -> None:
    r = SshProof(domain=Path("d.xml"), accel="tcg", user="root")
    r.host_key_expected = False
    _conclude(r)
    assert not r.ok
    r = SshProof(domain=Path("d.xml"), accel="tcg", user="root", command="false")
    r.command_status = 1
    _conclude(r)
    assert not r.ok
    r = SshProof(domain=Path("d.xml"), accel="tcg", user="root", host_key_expected=True, command_status=0)
    _conclude(r)
    assert r.ok


def qemus_using(path: Path) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmd and str(path).encode() in cmd:
                found.append(pid)
    return found


@pytest.mark.slow
def test_domain_that_never_boots_is_exit_6(tmp_path: Path) -> None:
    need_tools("qemu-system-x86_64", "qemu-img", "ssh-keygen")
    disk = tmp_path / "blank.raw"
    with open(disk, "wb") as f:
        f.write(b"\xeb" + os.urandom(4095))  # no boot signature: the firmware finds nothing to boot
        f.truncate(16 << 20)
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    p = subprocess.run([sys.executable, "-m", "euca2kvm", "libvirt", str(disk), "-o", str(tmp_path / "d.xml")],
                       capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)
    assert p.returncode == 0, p.stderr
    key = keygen(tmp_path, "ed25519")
    work = tmp_path / "work"
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "euca2kvm", "boot-test", str(tmp_path / "d.xml"), "--ssh-key",
                        str(key), "--timeout", "8", "--json", "--workdir", str(work)],
                       capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)
    elapsed = time.monotonic() - t0
    assert p.returncode == 6 and "Traceback" not in p.stderr, p.stderr
    r = json.loads(p.stdout)
    assert not r["ok"] and "ssh" not in r["milestones"] and r["last_ssh_error"]
    assert elapsed < 8 + 30  # the timeout plus start-up (accelerator probe) and clean-up on a loaded host
    assert not qemus_using(disk), "QEMU outlived boot-test"
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before
    assert (work / "serial.log").exists()
    assert not list(work.glob("overlay*"))  # overlays live in a private temporary directory, now gone
