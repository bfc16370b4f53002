# SPDX-License-Identifier: Apache-2.0
"""The NC's eucalyptus.conf virtio flags (parsed, never run) and the hardware chosen from them, with reasons."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from euca2kvm.errors import FormatError, UsageError
from euca2kvm.kvm.ncconf import DEFAULT, choose_hardware, read_nc_config

# The NC section of Eucalyptus 4.4's packaged tools/eucalyptus.conf, plus what sites write by hand.
PACKAGED = '''# If "1", use Virtio for the root file system
USE_VIRTIO_ROOT="1"

# If "1", use Virtio for dynamic block volumes
USE_VIRTIO_DISK="1"

# If "1", use Virtio for the network card
USE_VIRTIO_NET="1"
'''
DISKS = [("vol-4708bf47", "/dev/sda"), ("vol-0000da7a", "/dev/sdf"), ("vol-0000da7b", "vdg")]


def _conf(tmp_path: Path, text: str | bytes) -> str:
    p = tmp_path / "eucalyptus.conf"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(p)


def test_packaged_file_and_default_agree(tmp_path: Path) -> None:
    conf = read_nc_config(_conf(tmp_path, PACKAGED))
    assert conf.values == DEFAULT.values == {"USE_VIRTIO_ROOT": True, "USE_VIRTIO_DISK": True,
                                             "USE_VIRTIO_NET": True}
    assert "line 2" in conf.why("USE_VIRTIO_ROOT")


@pytest.mark.parametrize(("line", "value"), [
    ('USE_VIRTIO_NET="0"', False), ("USE_VIRTIO_NET=1", True), ("export USE_VIRTIO_NET='1'  # on", True),
    ('USE_VIRTIO_NET="yes"', False),  # the NC uses atoi(): no leading digits is 0
    ('USE_VIRTIO_NET="2"', True), ('  USE_VIRTIO_NET=" 1"', True), ("#USE_VIRTIO_NET=1", False),
    ('USE_VIRTIO_NET="$(reboot)"', False), ("USE_VIRTIO_NET=`id`", False),
])
def test_values_as_the_nc_reads_them(tmp_path: Path, line: str, value: bool) -> None:
    marker = tmp_path / "ran"
    conf = read_nc_config(_conf(tmp_path, f"{line}\nOTHER=$(touch {marker})\n"))
    assert conf.values["USE_VIRTIO_NET"] is value
    assert not marker.exists()  # parsed, never run
    assert conf.values["USE_VIRTIO_ROOT"] is False  # missing key: the NC's GET_VAR_INT default 0


def test_last_assignment_wins(tmp_path: Path) -> None:
    conf = read_nc_config(_conf(tmp_path, 'USE_VIRTIO_DISK="1"\nUSE_VIRTIO_DISK="0"\n'))
    assert conf.values["USE_VIRTIO_DISK"] is False and "line 2" in conf.why("USE_VIRTIO_DISK")


@pytest.mark.parametrize("content", [b"USE_VIRTIO_ROOT=\"1\nX=2\n", b"A=1\n\0\n", b"#" * ((1 << 20) + 1)])
def test_bad_files_are_format_errors(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(FormatError) as ei:
        read_nc_config(_conf(tmp_path, content))
    assert ei.value.exit_code == 3 and "eucalyptus.conf" in str(ei.value)


def test_symlink_directory_and_missing_refused(tmp_path: Path) -> None:
    target = _conf(tmp_path, PACKAGED)
    link = tmp_path / "link.conf"
    os.symlink(target, link)
    with pytest.raises(Exception) as ei:
        read_nc_config(str(link))
    assert getattr(ei.value, "exit_code", None) in (2, 5)
    with pytest.raises(UsageError):
        read_nc_config(str(tmp_path))
    with pytest.raises(UsageError):
        read_nc_config(str(tmp_path / "absent.conf"))


def test_virtio_renames_sd_to_vd() -> None:
    hw = choose_hardware(DISKS, "linux", DEFAULT, nc_given=False, mac="d0:0d:1a:2b:3c:4d")
    assert [(d.bus, d.target_dev, d.serial) for d in hw.disks] == [
        ("virtio", "vda", "vol-4708bf47-dev-sda"), ("virtio", "vdf", "vol-0000da7a-dev-sdf"),
        ("virtio", "vdg", "vol-0000da7b-dev-vdg")]
    assert hw.nic_model == "virtio" and (hw.cdrom_bus, hw.cdrom_dev) == ("ide", "hdc")
    assert any("tools/eucalyptus.conf" in line for line in hw.lines())
    assert "MAC d0:0d:1a:2b:3c:4d (database)" in hw.lines()


def test_no_virtio_gives_scsi_and_e1000(tmp_path: Path) -> None:
    conf = read_nc_config(_conf(tmp_path, "# nothing set\n"))
    hw = choose_hardware(DISKS, "linux", conf, nc_given=True)
    assert [(d.bus, d.target_dev) for d in hw.disks] == [("scsi", "sda"), ("scsi", "sdf"), ("scsi", "sdg")]
    assert hw.nic_model == "e1000" and "reads it as 0" in hw.nic_reason
    assert hw.mac is None and "libvirt picks one" in hw.lines()[-1]


def test_windows_always_virtio_and_overrides_win(tmp_path: Path) -> None:
    conf = read_nc_config(_conf(tmp_path, 'USE_VIRTIO_ROOT="0"\nUSE_VIRTIO_DISK="0"\nUSE_VIRTIO_NET="0"\n'))
    hw = choose_hardware(DISKS, "windows", conf, nc_given=True)
    assert {d.bus for d in hw.disks} == {"virtio"} and hw.nic_model == "virtio"
    hw = choose_hardware(DISKS, "windows", conf, nc_given=True, disk_bus="sata", nic_model="rtl8139")
    assert [(d.bus, d.target_dev) for d in hw.disks] == [("sata", "sda"), ("sata", "sdf"), ("sata", "sdg")]
    assert hw.nic_model == "rtl8139" and hw.disks[0].reason == "--disk-bus"
    assert hw.cdrom_bus == "ide"


def test_ide_letters_and_limits() -> None:
    hw = choose_hardware(DISKS[:2], "linux", DEFAULT, nc_given=False, disk_bus="ide")
    assert [d.target_dev for d in hw.disks] == ["hda", "hdb"]  # sdf does not exist on IDE: next free
    assert hw.cdrom_dev == "hdc"
    hw = choose_hardware(DISKS[:1] * 1 + [("v2", "sdb"), ("v3", "sdc"), ("v4", "sdd")], "linux", DEFAULT,
                         nc_given=False, disk_bus="ide")
    assert (hw.cdrom_bus, hw.cdrom_dev) == ("sata", "sda")
    with pytest.raises(UsageError):
        choose_hardware([(f"v{i}", None) for i in range(5)], "linux", DEFAULT, nc_given=False, disk_bus="ide")


def test_duplicate_or_odd_devices_get_free_letters() -> None:
    hw = choose_hardware([("v1", "/dev/sda1"), ("v2", "/dev/xvda"), ("v3", "weird")], "linux", DEFAULT,
                         nc_given=False)
    assert [d.target_dev for d in hw.disks] == ["vda", "vdb", "vdc"]
    with pytest.raises(UsageError):
        choose_hardware(DISKS, "linux", DEFAULT, nc_given=False, disk_bus="floppy")
    with pytest.raises(UsageError):
        choose_hardware(DISKS, "linux", DEFAULT, nc_given=False, nic_model="ne2k")


def test_ata_serials_fit_or_are_left_out() -> None:
    hw = choose_hardware([("vol-4708bf47", "sda"), ("vol-0fedcba987654321f", "sdb")], "linux", DEFAULT,
                         nc_given=False, disk_bus="sata")
    assert [d.serial for d in hw.disks] == ["vol-4708bf47-dev-sda", None]
    hw = choose_hardware([("vol-0fedcba987654321f", "sdb")], "linux", DEFAULT, nc_given=False)
    assert hw.disks[0].serial == "vol-0fedcba987654321f-dev-sdb"  # virtio: kept whole
