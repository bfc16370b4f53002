# SPDX-License-Identifier: Apache-2.0
"""The command-line contract: scan/inspect/export output, manifest, exit codes, in-use refusal."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from _env import need_root, need_tools
from clirun import euca2kvm
from euca2kvm.errors import EXIT_FORMAT, EXIT_IN_USE, EXIT_USAGE

Fixtures = tuple[Path, dict[str, Any]]


run = euca2kvm


def test_help_lists_exit_codes() -> None:
    out = run("--help").stdout
    for code in ("2 ", "3 ", "4 ", "5 ", "130"):
        assert code in out
    for cmd in ("scan", "inspect", "export"):
        assert cmd in out


def test_scan_json_contract(lvm_fixtures: Fixtures) -> None:
    root, truth = lvm_fixtures
    vols = json.loads(run("scan", str(root / "euca"), "--json").stdout)["volumes"]
    by_id = {v["id"]: v for v in vols}
    v = by_id["vol-4708bf47"]
    for key in ("id", "kind", "vg", "lv", "size", "files", "in_use"):
        assert key in v
    assert v["kind"] == "overlay" and v["size"] == 1 << 30 and v["lv"] == "euca-vol-4708bf47"
    assert v["files"] == [str(root / "euca" / "vol-4708bf47")]
    assert v["in_use"] == []
    assert by_id["snap-5e6f7a8b"]["kind"] == "snapshot"


def test_scan_table_mentions_refusals(lvm_fixtures: Fixtures) -> None:
    root, _ = lvm_fixtures
    p = run("scan", str(root / "thin"), str(root / "missing"))
    assert "thin" in p.stdout and "refused" in p.stdout


def test_inspect_json_has_extent_map(lvm_fixtures: Fixtures) -> None:
    root, truth = lvm_fixtures
    info = json.loads(run("inspect", "vg-str/lv-stripe", "--source", str(root / "striped"), "--json").stdout)
    assert info["lv"]["segments"][0]["type"] == "striped"
    assert info["extent_map"][0]["type"] == "striped" and info["extent_map"][0]["stripe_size"] == 65536
    assert len(info["pvs"]) == 2 and all(pv["file"] for pv in info["pvs"])
    assert info["extents"][0]["kind"] == "data"


def test_export_writes_images_and_manifest(lvm_fixtures: Fixtures, tmp_path: Path) -> None:
    root, truth = lvm_fixtures
    want = {(lv["vg"], lv["lv"]): lv for lv in truth["lvs"]}
    out = tmp_path / "out"
    out.mkdir()
    (out / "vol-4708bf47.raw").write_bytes(b"garbage" * 1000)
    run("export", "vol-4708bf47", "--source", str(root / "euca"), "-o", str(out), "--sha256")
    run("export", "vg-mseg/lvA", "vg-mseg/lvB", "--source", str(root / "multiseg"), "-o", str(out))
    man = json.loads((out / "manifest.json").read_text())
    entries = {e["id"]: e for e in man["volumes"]}
    assert set(entries) == {"vol-4708bf47", "vg-mseg/lvA", "vg-mseg/lvB"}
    e = entries["vol-4708bf47"]
    for key in ("id", "vg", "lv", "size", "digest", "output", "format", "files"):
        assert key in e
    assert e["format"] == "raw" and e["digest"].startswith("blkblake3-4m:")
    assert e["sha256"] == want[("euca-ebs-storage-vg-vol-4708bf47", "euca-vol-4708bf47")]["sha256"]
    h = hashlib.sha256(Path(e["output"]).read_bytes()).hexdigest()
    assert h == e["sha256"]
    lva = entries["vg-mseg/lvA"]
    assert hashlib.sha256(Path(lva["output"]).read_bytes()).hexdigest() == want[("vg-mseg", "lvA")]["sha256"]
    assert Path(lva["output"]).parent == out.resolve()
    assert Path(lva["output"]).name == "vg-mseg_lvA.raw"
    # re-running updates the entry in place, keeping the others
    run("export", "vg-mseg/lvB", "--source", str(root / "multiseg"), "-o", str(out))
    man2 = json.loads((out / "manifest.json").read_text())
    assert len(man2["volumes"]) == 3
    assert not [n for n in os.listdir(out) if n.startswith(".")]


def test_unknown_id_suggests_close_matches(lvm_fixtures: Fixtures, tmp_path: Path) -> None:
    root, _ = lvm_fixtures
    p = run("export", "vol-4708bf4", "--source", str(root / "euca"), "-o", str(tmp_path), check=EXIT_USAGE)
    assert "vol-4708bf47" in p.stderr and "did you mean" in p.stderr
    assert not list(tmp_path.iterdir())


def test_refused_lv_exit_code_and_message(lvm_fixtures: Fixtures, tmp_path: Path) -> None:
    root, _ = lvm_fixtures
    p = run("export", "vg-miss/lv-gone", "--source", str(root / "missing"), "-o", str(tmp_path),
            check=EXIT_FORMAT)
    assert "pv1" in p.stderr and "missing" in p.stderr
    p = run("export", "vg-thin/pool", "--source", str(root / "thin"), "-o", str(tmp_path), check=EXIT_FORMAT)
    assert "not a disk" in p.stderr
    p = run("export", "vg-segtypes/lv-err", "--source", str(root / "segtypes"), "-o", str(tmp_path),
            check=EXIT_FORMAT)
    assert "error" in p.stderr
    assert not [f for f in tmp_path.iterdir() if f.suffix == ".raw" or f.name.startswith(".")]


def test_zero_segment_exports_zeros(lvm_fixtures: Fixtures, tmp_path: Path) -> None:
    root, _ = lvm_fixtures
    run("export", "vg-segtypes/lv-zero", "--source", str(root / "segtypes"), "-o", str(tmp_path))
    out = tmp_path / "vg-segtypes_lv-zero.raw"
    assert out.read_bytes() == bytes(4 << 20) and os.stat(out).st_blocks == 0


def test_in_use_loop_device_refused_then_forced(lvm_fixtures: Fixtures, tmp_path: Path) -> None:
    need_root()
    need_tools("losetup")
    root, truth = lvm_fixtures
    src = tmp_path / "vols"
    src.mkdir()
    shutil.copy(root / "dots" / "vol-d0750001", src / "vol-d0750001")
    loop = subprocess.run(["losetup", "-f", "--show", "-r", str(src / "vol-d0750001")], capture_output=True,
                          text=True, check=True, timeout=30).stdout.strip()
    try:
        scan = json.loads(run("scan", str(src), "--json").stdout)["volumes"]
        assert any(loop in s for s in scan[0]["in_use"])
        out = tmp_path / "out"
        p = run("export", "vol-d0750001", "--source", str(src), "-o", str(out), check=EXIT_IN_USE)
        assert loop in p.stderr and "--force" in p.stderr
        assert not (out / "vol-d0750001.raw").exists()
        run("export", "vol-d0750001", "--source", str(src), "-o", str(out), "--force")
        want = next(lv for lv in truth["lvs"] if lv["lv"] == "lv-Q2xpaA..")["sha256"]
        assert hashlib.sha256((out / "vol-d0750001.raw").read_bytes()).hexdigest() == want
    finally:
        subprocess.run(["losetup", "-d", loop], check=True, timeout=30)


def test_in_use_open_by_process(lvm_fixtures: Fixtures, tmp_path: Path) -> None:
    root, _ = lvm_fixtures
    src = tmp_path / "vols"
    src.mkdir()
    shutil.copy(root / "dots" / "vol-d0750001", src / "vol-d0750001")
    holder = subprocess.Popen(["sleep", "60"], stdin=open(src / "vol-d0750001", "rb"))  # noqa: SIM115
    try:
        p = run("export", "vol-d0750001", "--source", str(src), "-o", str(tmp_path / "o"), check=EXIT_IN_USE)
        assert f"pid {holder.pid} (sleep)" in p.stderr
    finally:
        holder.kill()
        holder.wait()


def test_sources_never_written(lvm_fixtures: Fixtures, tmp_path: Path) -> None:
    root, _ = lvm_fixtures
    files = sorted((root / "striped").iterdir())
    before = {f: (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns) for f in files}
    run("export", "vg-str/lv-stripe", "vg-str/lv-span", "--source", str(root / "striped"), "-o", str(tmp_path))
    after = {f: (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns) for f in files}
    assert before == after


@pytest.mark.parametrize("name", ["../evil", "a/../../b", ".hidden", "x/y"])
def test_output_names_from_metadata_stay_in_outdir(tmp_path: Path, name: str) -> None:
    from euca2kvm.export.manifest import output_path

    p = output_path(tmp_path, name, "raw")
    assert p.parent == tmp_path and not p.name.startswith(".") and "/" not in p.name


def test_gzip_snapshot_object_scan_and_export(tmp_path: Path) -> None:
    import gzip
    import random

    data = random.Random(3).randbytes(3 << 20) + bytes(2 << 20) + b"tail"
    vols = tmp_path / "v"
    vols.mkdir()
    # two gzip members, as a multipart upload of a large snapshot produces
    (vols / "snap-0123abcd.gz").write_bytes(gzip.compress(data[: 1 << 20]) + gzip.compress(data[1 << 20 :]))
    scan = json.loads(run("scan", str(vols), "--json").stdout)["volumes"]
    assert [(v["id"], v["kind"], v["size"]) for v in scan] == [("snap-0123abcd", "snapshot-gz", None)]
    out = tmp_path / "out"
    run("export", "snap-0123abcd", "--source", str(vols), "-o", str(out), "--sha256")
    entry = json.loads((out / "manifest.json").read_text())["volumes"][0]
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size"] == len(data)
    assert (out / "snap-0123abcd.raw").read_bytes() == data
    run("verify", str(out))


def test_cli_defaults_match_the_library() -> None:
    from euca2kvm.cli.common import DEFAULT_BOOT_TIMEOUT
    from euca2kvm.kvm.boottest import DEFAULT_TIMEOUT

    assert DEFAULT_BOOT_TIMEOUT == DEFAULT_TIMEOUT


def test_every_command_has_help() -> None:
    from euca2kvm.cli import COMMANDS

    for name in COMMANDS:
        out = run(name, "--help").stdout
        assert out.startswith(f"usage: euca2kvm {name}"), name
