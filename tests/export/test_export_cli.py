# SPDX-License-Identifier: Apache-2.0
"""Exports through the CLI: every format round-trips byte-exactly, verify catches one flipped byte,
re-runs resume, interrupts leave nothing that looks complete, full destinations are refused, and
reflink filesystems share blocks."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from _env import need_root, need_tools
from clirun import euca2kvm
from euca2kvm.errors import EXIT_IO, EXIT_SIGINT, EXIT_VERIFY
from euca2kvm.eucalyptus.discovery import discover
from euca2kvm.export import qemu_img
from euca2kvm.lvm.reader import ExtentReader
from lvmwriter import Mda, build_pv, linear_lv, vg_text
from refdigest import file_blkdigest

MiB = 1 << 20
Fixtures = tuple[Path, dict[str, Any]]
FORMATS = [("raw", []), ("qcow2", []), ("qcow2", ["--compress"]), ("vmdk", []),
           ("vmdk", ["--vmdk-subformat", "streamOptimized"]), ("vhdx", []), ("vpc", []), ("vdi", [])]
EXT = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vhdx": "vhdx", "vpc": "vhd", "vdi": "vdi"}


cli = euca2kvm


def reference(root: Path, scenario: str, ident: str, dest: Path) -> Path:
    """The LV's bytes as the reader sees them (checked against lvm2 elsewhere), as a raw file with holes
    wherever a 4 KiB block is zero (so ``qemu-img compare -s`` can also compare allocation)."""
    vol = discover([str(root / scenario)], check_in_use=False).find(ident)
    with ExtentReader(vol.extent_map()) as r, open(dest, "wb") as f:
        f.truncate(r.size)
        for off in range(0, r.size, 4 * MiB):
            chunk = r.pread(off, 4 * MiB)
            for g in range(0, len(chunk), 4096):
                if chunk[g : g + 4096].strip(b"\0"):
                    f.seek(off + g)
                    f.write(chunk[g : g + 4096])
    return dest


@pytest.mark.parametrize("scenario, ident", [("dots", "vol-d0750001"), ("multiseg", "vg-mseg/lvA"),
                                             ("striped", "vg-str/lv-stripe")])
def test_every_format_round_trips(lvm_fixtures: Fixtures, tmp_path: Path, scenario: str, ident: str) -> None:
    need_tools("qemu-img", "qemu-nbd")
    root, _ = lvm_fixtures
    ref = reference(root, scenario, ident, tmp_path / "ref.raw")
    for fmt, extra in FORMATS:
        out = tmp_path / f"out-{fmt}{''.join(extra)}"
        out.mkdir()
        final = out / f"{ident.replace('/', '_')}.{EXT[fmt]}"
        final.write_bytes(os.urandom(1 << 16) * 16)  # garbage under the final name
        cli("export", ident, "--source", str(root / scenario), "-o", str(out), "--format", fmt, *extra)
        qfmt = "vpc" if fmt == "vpc" else None
        assert qemu_img.compare(str(ref), str(final), strict=(fmt == "raw"), fmt_a="raw", fmt_b=qfmt or fmt), \
            (fmt, extra)
        entry = json.loads((out / "manifest.json").read_text())["volumes"][0]
        assert entry["format"] == fmt and entry["verified"] and entry["digest"].startswith("blkblake3-4m:")
        cli("verify", str(out / "manifest.json"))
        assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_verify_catches_one_flipped_byte(lvm_fixtures: Fixtures, tmp_path: Path) -> None:
    need_tools("qemu-io")
    root, _ = lvm_fixtures
    out = tmp_path / "out"
    cli("export", "vol-d0750001", "--source", str(root / "dots"), "-o", str(out))
    cli("export", "vol-d0750001", "--source", str(root / "dots"), "-o", str(out), "--format", "qcow2")
    cli("verify", str(out))
    raw = out / "vol-d0750001.raw"
    with open(raw, "r+b") as f:
        f.seek(5 * MiB + 3)
        b = f.read(1)
        f.seek(5 * MiB + 3)
        f.write(bytes([b[0] ^ 0x20]))
    p = cli("verify", str(out / "manifest.json"), check=EXIT_VERIFY)
    assert "mismatch" in p.stdout and "vol-d0750001.raw" in p.stdout
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {7 * MiB} 512", str(out / "vol-d0750001.qcow2")],
                   check=True, capture_output=True, timeout=60)
    p = cli("verify", str(out), "--json", check=EXIT_VERIFY)
    status = {Path(r["output"]).suffix: r["status"] for r in json.loads(p.stdout)}
    assert status == {".raw": "mismatch", ".qcow2": "mismatch"}


def test_sha256_block_digest_exports_verifies_and_resumes(lvm_fixtures: Fixtures, tmp_path: Path) -> None:
    """--block-digest sha256 records blksha256-4m; verify and resume use each entry's own algorithm."""
    root, _ = lvm_fixtures
    out = tmp_path / "out"
    src = ["vol-d0750001", "--source", str(root / "dots"), "-o", str(out)]
    cli("export", *src, "--block-digest", "sha256")
    cli("export", *src, "--format", "qcow2")
    entries = {e["format"]: e for e in json.loads((out / "manifest.json").read_text())["volumes"]}
    raw = out / "vol-d0750001.raw"
    assert entries["raw"]["digest"] == file_blkdigest(raw, "blksha256-4m")
    assert entries["qcow2"]["digest"] == file_blkdigest(raw, "blkblake3-4m")
    cli("verify", str(out))
    again = [json.loads(ln) for ln in cli("export", *src, "--block-digest", "sha256", "--json").stdout.splitlines()]
    assert [e["event"] for e in again if e["event"] in ("done", "skipped")] == ["skipped"]
    data = json.loads((out / "manifest.json").read_text())
    for e in data["volumes"]:
        e["digest"] = "blkmd5-4m:" + e["digest"].partition(":")[2]
    (out / "manifest.json").write_text(json.dumps(data))
    p = cli("verify", str(out), "--json", check=EXIT_VERIFY)
    assert {r["status"] for r in json.loads(p.stdout)} == {"unverifiable"}
    assert "unknown block digest" in p.stdout


def test_rerun_skips_verified_outputs_and_redoes_changed_ones(lvm_fixtures: Fixtures, tmp_path: Path) -> None:
    root, _ = lvm_fixtures
    out = tmp_path / "out"
    src = ["--source", str(root / "multiseg"), "-o", str(out), "--json"]
    first = [json.loads(ln) for ln in cli("export", "--all", *src).stdout.splitlines()]
    assert sorted(e["id"] for e in first if e["event"] == "done") == ["vg-mseg/lvA", "vg-mseg/lvB"]
    again = [json.loads(ln) for ln in cli("export", "--all", *src).stdout.splitlines()]
    assert sorted(e["id"] for e in again if e["event"] == "skipped") == ["vg-mseg/lvA", "vg-mseg/lvB"]
    # a damaged output is exported again; --overwrite redoes everything
    with open(out / "vg-mseg_lvB.raw", "r+b") as f:
        f.write(b"damage")
    third = [json.loads(ln) for ln in cli("export", "--all", *src).stdout.splitlines()]
    assert {e["id"]: e["event"] for e in third if e["event"] in ("done", "skipped")} == {
        "vg-mseg/lvA": "skipped", "vg-mseg/lvB": "done"}
    fourth = [json.loads(ln) for ln in cli("export", "--all", "--overwrite", *src).stdout.splitlines()]
    assert sum(e["event"] == "done" for e in fourth) == 2
    cli("verify", str(out))


def dense_volume(d: Path, vol: str, mib: int) -> None:
    """A container (PV written by tests/lvmwriter.py) with a dense, random LV of ``mib`` MiB."""
    uuid = "Dense0" + "y" * 26
    text = vg_text(f"vg-{vol}", "DenseV-0000-1111-2222-3333-4444-555555", 1,
                   [("pv0", "Dense0-yyyy-yyyy-yyyy-yyyy-yyyy-yyyyyy", 2048, mib // 4)],
                   linear_lv(f"euca-{vol}", "DenseL-0000-1111-2222-3333-4444-555555", mib // 4, tags=f'"{vol}"'))
    img = build_pv(MiB, uuid, [Mda(4096, 64 * 1024, text=text)], MiB)
    rnd = random.Random(5)
    with open(d / vol, "wb") as f:
        f.write(img)
        for _ in range(mib // 8):
            f.write(rnd.randbytes(8 * MiB))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_export_leaves_nothing_complete_and_resumes(tmp_path: Path, sig: int) -> None:
    vols = tmp_path / "vols"
    vols.mkdir()
    dense_volume(vols, "vol-1e7e0001", 768)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "euca2kvm", "export", "vol-1e7e0001", "--source", str(vols), "-o", str(out),
            "--format", "qcow2", "--workers", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".partial") for p in out.glob(".*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    final = out / "vol-1e7e0001.qcow2"
    assert not final.exists(), "an interrupted export left a file under the final name"
    if sig == signal.SIGINT:
        assert proc.returncode == EXIT_SIGINT, err
        assert not list(out.glob(".*.partial"))
    else:
        assert proc.returncode == -signal.SIGKILL
    cli(*args[3:])
    assert final.exists()
    cli("verify", str(out))
    assert not list(out.glob(".*.partial"))


def test_full_destination_is_refused_with_numbers(tmp_path: Path) -> None:
    need_root()
    vols = tmp_path / "vols"
    vols.mkdir()
    dense_volume(vols, "vol-f0110001", 32)
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True, timeout=30)
    try:
        for fmt in ("raw", "qcow2"):
            p = cli("export", "vol-f0110001", "--source", str(vols), "-o", str(mnt), "--format", fmt, check=EXIT_IO)
            assert "not enough space" in p.stderr and "bytes" in p.stderr
            assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)


def test_jobs_and_json_events(lvm_fixtures: Fixtures, tmp_path: Path) -> None:
    root, truth = lvm_fixtures
    p = cli("export", "--all", "--source", str(root / "striped"), "-o", str(tmp_path), "--jobs", "2", "--json",
            "--sha256")
    events = [json.loads(ln) for ln in p.stdout.splitlines()]
    kinds = {(e["event"], e.get("id")) for e in events}
    for vid in ("vg-str/lv-stripe", "vg-str/lv-span"):
        assert ("start", vid) in kinds and ("done", vid) in kinds and ("progress", vid) in kinds
    want = {lv["lv"]: lv["sha256"] for lv in truth["lvs"] if lv["vg"] == "vg-str"}
    for e in events:
        if e["event"] == "done":
            assert e["entry"]["sha256"] == want[e["entry"]["lv"]]


def test_reflink_filesystem_shares_blocks(tmp_path: Path) -> None:
    need_root()
    need_tools("mkfs.btrfs", "filefrag", "mount")
    img = tmp_path / "btrfs.img"
    with open(img, "wb") as f:
        f.truncate(1 << 30)
    subprocess.run(["mkfs.btrfs", "-q", str(img)], check=True, timeout=60)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True, timeout=60)
    try:
        vols = mnt / "vols"
        vols.mkdir()
        dense_volume(vols, "vol-4ef10001", 64)
        os.sync()
        out = mnt / "out"
        t0 = time.monotonic()
        cli("export", "vol-4ef10001", "--source", str(vols), "-o", str(out), "--no-verify")
        elapsed = time.monotonic() - t0
        frag = subprocess.run(["filefrag", "-v", str(out / "vol-4ef10001.raw")], capture_output=True, text=True,
                              check=True, timeout=60).stdout
        assert "shared" in frag, frag
        print(f"\nreflink export of 64 MiB (--no-verify, incl. process start): {elapsed:.3f} s")
        cli("export", "vol-4ef10001", "--source", str(vols), "-o", str(out), "--overwrite")
        cli("verify", str(out))
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=60)
