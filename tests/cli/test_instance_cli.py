# SPDX-License-Identifier: Apache-2.0
"""plan / export-instance / inventory command contract: every blocker named, nothing written on refusal."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _env import need_root, need_tools
from euca2kvm.errors import EXIT_FORMAT, EXIT_IN_USE, EXIT_USAGE
from lvmwriter import Mda, build_pv, linear_lv, vg_text

MiB = 1 << 20
HEADER = 4 * MiB


def run(
    *args: str, check: int | None = 0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [sys.executable, "-m", "euca2kvm", *args], capture_output=True, text=True, timeout=300, env=env
    )
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def overlay(d: Path, vid: str, mib: int, extra_pv: bool = False) -> None:
    """A container made like OverlayManager (real lvm2); ``extra_pv``: the VG was extended onto a temporary
    ``<id>Xy12Zq`` file (an interrupted snapshot) and the LV spans both, then the temporary file is lost."""
    import lvmfix

    vg, lv = f"euca-ebs-storage-vg-{vid}", f"euca-{vid}"
    files = {vid: mib * MiB + HEADER, **({f"{vid}Xy12Zq": 8 * MiB} if extra_pv else {})}

    def setup(lvm: Any, devs: list[str]) -> None:
        lvm("pvcreate", *devs)
        lvm("vgcreate", vg, *devs)
        lvm("lvcreate", "--addtag", vid, "-n", lv, "-l", "100%FREE", vg)

    lvmfix.with_lvm(d, files, setup)
    if extra_pv:
        (d / f"{vid}Xy12Zq").unlink()


def unsupported(d: Path, vid: str) -> None:
    """A container whose LV has a segment type this version refuses (raid6), written without lvm2."""
    uuid = "RaId6x" + "0123456789abcdefghijklmnop"
    dashed = uuid[:6] + "-" + "-".join(uuid[6 + 4 * i : 10 + 4 * i] for i in range(5)) + "-" + uuid[26:]
    lvs = linear_lv(f"euca-{vid}", "LvIdLv-0000-1111-2222-3333-4444-555555", 2, tags=f'"{vid}"')
    text = vg_text(
        f"euca-ebs-storage-vg-{vid}",
        "VgIdVg-0000-1111-2222-3333-4444-555555",
        1,
        [("pv0", dashed, 2048, 2)],
        lvs.replace('type = "striped"', 'type = "raid6"'),
    )
    (d / vid).write_bytes(build_pv(12 * MiB, uuid, [Mda(4096, 64 * 1024, text=text)], MiB))


def inventory(
    instances: list[dict[str, Any]],
    storage: list[dict[str, Any]] | None = None,
    volumes_dir: str | None = None,
) -> dict[str, Any]:
    return {
        "format": "euca2kvm-inventory",
        "version": 1,
        "source": "test",
        "captured_at": "2024-05-01T10:00:00Z",
        "volumes_dir": volumes_dir,
        "instances": instances,
        "storage_volumes": storage or [],
    }


def inst(iid: str, devs: list[tuple[str, str]], kernel: str | None = None) -> dict[str, Any]:
    return {
        "id": iid,
        "state": "stopped",
        "root_device": "/dev/sda",
        "kernel_id": kernel,
        "vm_type": {"name": "m1.medium", "cpus": 1, "memory_mib": 512},
        "attachments": [
            {"volume_id": v, "device": dev, "is_root": i == 0, "kind": "boot" if i == 0 else "runtime"}
            for i, (v, dev) in enumerate(devs)
        ],
    }


@contextlib.contextmanager
def loop(path: Path) -> Iterator[str]:
    dev = subprocess.run(
        ["losetup", "-f", "--show", "-r", str(path)], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False, timeout=30)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    need_root()
    need_tools("lvm", "losetup")
    d = tmp_path_factory.mktemp("volumes")
    overlay(d, "vol-b10c0001", 8)
    overlay(d, "vol-b10c0003", 8, extra_pv=True)
    unsupported(d, "vol-b10c0004")
    overlay(d, "vol-b10c0005", 8)  # blank: no boot loader
    overlay(d, "vol-b10c0006", 4)
    inv = inventory(
        [
            inst(
                "i-b10c0001",
                [
                    ("vol-b10c0001", "/dev/sda"),
                    ("vol-b10c0002", "/dev/sdb"),
                    ("vol-b10c0003", "/dev/sdc"),
                    ("vol-b10c0004", "/dev/sdd"),
                ],
            ),
            inst("i-b10c0002", [("vol-b10c0005", "/dev/sda")], kernel="eki-0000000a"),
            inst("i-b10c0003", [("vol-b10c0006", "/dev/sda")]),
        ],
        volumes_dir=str(d),
    )
    f = d.parent / "inventory.json"
    f.write_text(json.dumps(inv))
    return {"dir": d, "inv": f}


def test_plan_lists_every_blocker_and_writes_nothing(cloud: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    with loop(cloud["dir"] / "vol-b10c0001") as dev:  # the SC (or someone) has the boot volume attached
        p = run(
            "plan",
            "i-b10c0001",
            "i-b10c0002",
            "--inventory",
            str(cloud["inv"]),
            "-o",
            str(out),
            "--json",
            check=None,
        )
    assert p.returncode == EXIT_USAGE, p.stderr  # the first hard blocker: a missing container file
    plan = json.loads(p.stdout)
    assert not out.exists()
    a, b = plan["instances"]
    kinds = {d["volume_id"]: [x["kind"] for x in d["blockers"]] for d in a["disks"]}
    assert kinds == {
        "vol-b10c0001": ["in-use"],
        "vol-b10c0002": ["missing-file"],
        "vol-b10c0003": ["missing-pv"],
        "vol-b10c0004": ["unsupported"],
    }
    msgs = {d["volume_id"]: " ".join(x["message"] for x in d["blockers"]) for d in a["disks"]}
    assert dev in msgs["vol-b10c0001"]
    assert str(cloud["dir"] / "vol-b10c0002") in msgs["vol-b10c0002"]
    assert "which is missing" in msgs["vol-b10c0003"] and "raid6" in msgs["vol-b10c0004"]
    assert [d["target_dev"] for d in a["disks"]] == ["vda", "vdb", "vdc", "vdd"]
    assert a["disks"][0]["bytes_to_read"] == 0 and a["disks"][0]["size"] == 8 * MiB
    assert [x["kind"] for x in b["blockers"]] == ["no-boot-loader"] and "eki-0000000a" in b["blockers"][0][
        "message"
    ]
    assert plan["free_bytes"] > 0 and plan["estimated_bytes"] == 0
    table = run(
        "plan", "--inventory", str(cloud["inv"]), "-o", str(out), check=None
    )  # all instances, human form
    for word in ("missing-file", "missing-pv", "unsupported", "no-boot-loader", "vol-b10c0006"):
        assert word in table.stdout
    assert not out.exists()


def test_export_instance_refuses_before_writing(cloud: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    p = run(
        "export-instance", "i-b10c0001", "--inventory", str(cloud["inv"]), "-o", str(out), check=EXIT_USAGE
    )
    assert "vol-b10c0002" in p.stderr and "missing-pv" in p.stderr and not out.exists()
    p = run(
        "export-instance", "i-b10c0002", "--inventory", str(cloud["inv"]), "-o", str(out), check=EXIT_FORMAT
    )
    assert "no boot loader" in p.stderr and not out.exists()
    run(
        "export-instance",
        "i-b10c0002",
        "--inventory",
        str(cloud["inv"]),
        "-o",
        str(out),
        "--ramdisk",
        "/x",
        check=EXIT_USAGE,
    )
    run("inventory", check=EXIT_USAGE)


def test_tgt_target_blocks_unless_forced(cloud: dict[str, Any], tmp_path: Path) -> None:
    """A tgtadm on PATH (a stand-in printing tgtd's listing) exports vol-b10c0006's LV."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tgtadm = bindir / "tgtadm"
    tgtadm.write_text(
        "#!/bin/sh\ncat <<'EOF'\nTarget 7: iqn.2009-06.com.eucalyptus.one:store7\n    LUN information:\n"
        "        LUN: 1\n            Backing store path: "
        "/dev/euca-ebs-storage-vg-vol-b10c0006/euca-vol-b10c0006\nEOF\n"
    )
    tgtadm.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    out = tmp_path / "out"
    p = run(
        "export-instance",
        "i-b10c0003",
        "--inventory",
        str(cloud["inv"]),
        "-o",
        str(out),
        check=EXIT_IN_USE,
        env=env,
    )
    assert "target 7 (iqn.2009-06.com.eucalyptus.one:store7)" in p.stderr and not out.exists()
    p = run(
        "export-instance", "i-b10c0003", "--inventory", str(cloud["inv"]), "-o", str(out), "--force", env=env
    )
    assert "exporting because of --force" in p.stderr
    assert (out / "i-b10c0003-sda.raw").stat().st_size == 4 * MiB and (out / "i-b10c0003.xml").exists()
    entry = json.loads((out / "manifest.json").read_text())["volumes"][0]
    assert (entry["instance"], entry["volume_id"], entry["device"], entry["target_dev"]) == (
        "i-b10c0003",
        "vol-b10c0006",
        "/dev/sda",
        "vda",
    )
