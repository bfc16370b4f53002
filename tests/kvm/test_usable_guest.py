# SPDX-License-Identifier: Apache-2.0
"""The usable-boot proof with a real cloud-init guest, through the whole tool chain.

A Debian 12 guest (systemd, cloud-init 22.4, openssh-server; :mod:`cloudguest`) is booted once "as the
cloud did" (a NoCloud seed with the instance id, hostname, key and the cloud's MAC stands in for the
metadata service), so cloud-init provisions it; its host keys are recorded and it is powered off cleanly.
That disk goes into a Eucalyptus overlay container made by the real lvm2, the instance (MAC, key, private
DNS name, VM type, boot volume) into the test PostgreSQL with the real tables; then ``inventory --db`` ->
``export-instance`` -> ``boot-test DOMAIN.xml --ssh-key``.

The exported instance must come up as the same machine: login with the instance key, the same host keys,
cloud-init's instance id unchanged with datasource NoCloud, the database's MAC and hostname. A control run
of the same image with a generic domain (``euca2kvm libvirt IMAGE``: QEMU's default MAC, no seed) shows
what the domain and seed buy: the guest boots to its login prompt but its network config (matched to the
old MAC by cloud-init at first boot) never applies, so SSH never answers (as the recipe's EVIDENCE.md
found: "fast-bootT2 no seed + MAC :07 -> sshd up but no network").
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.kvm.cloudguest import CLOUD_USER_DATA, CloudInstance, Provisioned, provisioned_guest

import lvmfix
from _env import need_root, need_tools

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "eucalyptus"))  # pg.py, as tests/eucalyptus/conftest.py does
from pg import PgServer, shared_layout  # noqa: E402

from euca2kvm.kvm.guestfacts import fingerprint, parse_public_keys  # noqa: E402
from refdigest import file_sha256 as sha256  # noqa: E402

INSTANCE = "i-3f2a91c0"
VOLUME = "vol-c1a0d001"
MAC = "d0:0d:3f:2a:91:c0"  # what the CLC recorded (Eucalyptus makes it from the instance id)
PRIVATE_DNS = "euca-172-16-9-30.eucalyptus.internal"
CLOUD = CloudInstance(INSTANCE, PRIVATE_DNS, MAC)
# Kernel start to SSH accepted for the exported instance (second boot, same instance id: no per-instance
# modules, host keys already there): measured 236.6 s under TCG on this 2-core host with a load average of
# 11 (other test runs beside it); the recipe measured SSH at 54 s after QEMU start on an idle host. The bound
# leaves room for a loaded CI host inside the 600 s boot timeout.
KERNEL_TO_SSH_BOUND = 420.0
BOOT_TIMEOUT = 600  # boot-test --timeout for the proof (its documented default)
CLI_TIMEOUT = BOOT_TIMEOUT + 120
# The control run is given the proof's own time to SSH plus this margin, at least CONTROL_MIN seconds: if
# it were going to answer, it would have by then.
CONTROL_MARGIN = 30.0
CONTROL_MIN = 90.0
MiB = 1 << 20

pytestmark = pytest.mark.slow


def euca2kvm(*args: str, check: int | None = 0, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "euca2kvm", *args], capture_output=True, text=True, timeout=timeout,
                       check=False)
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout[-3000:], p.stderr[-3000:])
    return p


def q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def instance_sql(public_key: str, user_data: str) -> str:
    """Our instance, stopped for the migration, in the CLC and SC tables (same shape as the rows of
    tests/eucalyptus/sql/*.sql): m1.large (2 vCPUs, 1024 MiB), the boot volume on /dev/sda."""
    return f"""
SET search_path TO eucalyptus_cloud;
INSERT INTO metadata_instances (id, version, creation_timestamp, last_update_timestamp, metadata_perm_uuid,
    metadata_account_id, metadata_user_id, metadata_display_name, metadata_state, metadata_vm_type_id,
    metadata_vm_machine_image_id, metadata_vm_virtualization_type, metadata_vm_platform,
    metadata_vm_architecture, metadata_vm_partition_name, metadata_vm_cluster_name, metadata_vm_service_tag,
    metadata_vm_mac_address, metadata_vm_private_address, metadata_vm_public_address, metadata_vm_private_dns,
    metadata_vm_public_dns, metadata_vm_private_addressing, metadata_vm_sshkey, metadata_vm_user_data)
VALUES ('ff8081814b7a1c2d014b7a1f00000010', 5, now(), now(), 'b0000000-0000-4000-8000-000000000010',
    '000123456789', 'AIDAEXAMPLEUSER01', {q(INSTANCE)}, 'STOPPED', '8a2b0c6e4f1a4b7e9c0d000000000003',
    'emi-d3b1a2c0', 'hvm', 'linux', 'x86_64', 'one', 'cc-one', 'http://10.1.0.21:8775/axis2/services/EucalyptusNC',
    {q(MAC.upper())}, '172.16.9.30', '0.0.0.0', {q(PRIVATE_DNS)}, '', false, {q(public_key)},
    convert_to({q(user_data)}, 'UTF8'));
INSERT INTO metadata_instances_persistent_volumes (vminstance_id, metadata_vm_volume_id,
    metadata_vm_volume_device, metadata_vm_volume_remote_device, metadata_vm_volume_is_root_device,
    metadata_vm_vol_delete_on_terminate, metadata_vm_volume_status, metadata_vm_volume_attach_time)
VALUES ('ff8081814b7a1c2d014b7a1f00000010', {q(VOLUME)}, '/dev/sda', NULL, true, false, 'detached', now());
INSERT INTO metadata_volumes (id, version, creation_timestamp, last_update_timestamp, metadata_perm_uuid,
    metadata_account_id, metadata_user_id, metadata_display_name, metadata_state, metadata_volume_size,
    metadata_volume_partition, metadata_volume_sc_name, metadata_volume_parentsnapshot)
VALUES ('c0000000000000000000000000000010', 1, now(), now(), 'c1000000-0000-4000-8000-000000000010',
    '000123456789', 'AIDAEXAMPLEUSER01', {q(VOLUME)}, 'EXTANT', 1, 'one', 'one', NULL);
SET search_path TO eucalyptus_storage;
INSERT INTO volumes (id, version, metadata_perm_uuid, volume_name, sc_name, user_name, size, status, zone,
                     snapshot_id)
VALUES ('e0000000000000000000000000000010', 1, 'e1000000-0000-4000-8000-000000000010', {q(VOLUME)}, 'one',
        '000123456789', 1, 'available', 'one', NULL);
INSERT INTO iscsivolumeinfo (id, version, metadata_perm_uuid, sc_name, volume_name, lodev_name, lofile_name,
                             pv_name, vg_name, lv_name, size, status, snapshot_of, cleanup, storename, tid,
                             lun, storeuser)
VALUES ('90000000000000000000000000000010', 1, '91000000-0000-4000-8000-000000000010', 'one', {q(VOLUME)},
        NULL, NULL, NULL, {q('euca-ebs-storage-vg-' + VOLUME)}, {q('euca-' + VOLUME)}, 1, 'available', NULL,
        false, NULL, NULL, NULL, NULL);
"""


@pytest.fixture(scope="module")
def guest() -> Provisioned:
    need_root()
    need_tools("qemu-system-x86_64", "qemu-img", "lvm", "losetup")
    return provisioned_guest(CLOUD)


@pytest.fixture(scope="module")
def database(guest: Provisioned) -> Iterator[PgServer]:
    with shared_layout() as srv:
        user_data = CLOUD_USER_DATA.format(key=guest.public_key)  # what the instance was launched with
        srv.run_sql("eucalyptus_shared", instance_sql(guest.public_key, user_data))
        yield srv


def boot_json(p: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(p.stdout)
    return data


def test_exported_instance_is_the_same_machine(tmp_path: Path, guest: Provisioned, database: PgServer) -> None:
    t0 = time.monotonic()
    vols = tmp_path / "volumes"
    vols.mkdir()
    container = lvmfix.euca_container(vols, VOLUME, guest.disk)
    before = sha256(container)
    inv = tmp_path / "inventory.json"
    euca2kvm("inventory", "--db", database.url("eucalyptus_shared"), "-o", str(inv))
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{INSTANCE}.xml").write_text("garbage left by an earlier run\n")  # must be replaced, not read
    euca2kvm("export-instance", INSTANCE, "-o", str(out), "--inventory", str(inv), "--source", str(vols))
    domain = out / f"{INSTANCE}.xml"
    t_export = time.monotonic() - t0

    # the proof: the exported instance, its domain and seed, the instance key, the host keys recorded at
    # the first boot in the "cloud"
    p = euca2kvm("boot-test", str(domain), "--ssh-key", str(guest.key), "--expect-host-key", str(guest.host_keys),
                 "--timeout", str(BOOT_TIMEOUT), "--json")
    r = boot_json(p)
    print(f"\nexport {t_export:.1f}s; first boot in the cloud {guest.first_boot}\nproof: "
          + json.dumps({k: r[k] for k in ("milestones", "kernel_to_ssh", "host_key", "guest")}, indent=1))
    assert r["ok"] and r["host_key_expected"] is True
    g = r["guest"]
    recorded = sorted(fingerprint(b) for _, b in parse_public_keys(guest.host_keys.read_text()))
    assert sorted(k["fingerprint"] for k in g["host_keys"]) == recorded  # every host key unchanged
    assert g["instance_id"] == INSTANCE and g["datasource"] == "NoCloud"
    assert g["cloud_init_status"] == "done"
    assert MAC in [i["mac"] for i in g["interfaces"]]
    assert g["hostname"] in (PRIVATE_DNS, PRIVATE_DNS.split(".")[0])
    assert r["kernel_to_ssh"] is not None and r["kernel_to_ssh"] < KERNEL_TO_SSH_BOUND
    assert sha256(container) == before, "the source container changed"

    # the control: the same image in a generic domain (QEMU's default MAC, no seed)
    image = Path(next(d for d in _disk_paths(domain)))
    generic = tmp_path / "generic.xml"
    euca2kvm("libvirt", str(image), "-o", str(generic))
    budget = max(CONTROL_MIN, r["milestones"]["ssh"] + CONTROL_MARGIN)
    p = euca2kvm("boot-test", str(generic), "--ssh-key", str(guest.key), "--timeout", f"{budget:.0f}", "--json",
                 check=6)
    c = boot_json(p)
    print(f"control (generic domain, {budget:.0f}s): " + json.dumps({k: c[k] for k in ("milestones", "reason",
                                                                                      "last_ssh_error")}))
    assert not c["ok"] and "ssh" not in c["milestones"]
    assert "login" in c["milestones"] or "kernel" in c["milestones"]  # it booted; it is just unreachable
    assert c["console_tail"]
    assert sha256(container) == before


def _disk_paths(domain: Path) -> list[str]:
    from euca2kvm.kvm.domainxml import parse_domain

    return [str(d.path) for d in parse_domain(domain).disks if d.device == "disk"]
