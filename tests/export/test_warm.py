# SPDX-License-Identifier: Apache-2.0
"""Warm migration: a pass while a process writes the volume, then a delta sync.

The container is made by the real lvm2 (tests/lvmfix.py); the LV's bytes are read at the offset
lvm2 reports (a linear LV on one PV), which is the ground truth the images are compared with.
A writer process makes random 4 KiB writes into the LV's byte range at a known rate while the warm
pass runs; the sync must then give exactly the source's final bytes and write exactly the blocks
that differ (its own counter and ``/proc/<pid>/io`` write_bytes of the process), and a sync on an
unchanged volume writes nothing to the image.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import euca2kvm
from _env import need_root, need_tools
from euca2kvm import safefs
from euca2kvm.errors import EXIT_FORMAT, EXIT_IO, EXIT_USAGE, EXIT_VERIFY, IOFailure
from euca2kvm.eucalyptus.discovery import discover
from euca2kvm.export import qemu_img, sidecar
from euca2kvm.export.formats import output_format
from euca2kvm.export.pipeline import ExportOptions
from euca2kvm.export.sync import export_pass
from lvmfix import linear_container, with_lvm
from refdigest import file_blkdigest

CUTOVER_SCHEMA = Path(euca2kvm.__file__).resolve().parent / "schemas" / "cutover.schema.json"
MiB = 1 << 20
BLOCK = 4 * MiB
LV_MIB = 64
IDENT = "vg-warm/lv-warm"
# The writer (an instance that runs): 4 KiB writes every WRITE_INTERVAL_S (about 250 per second) until told
# to stop, at most MAX_WRITES (a bound: 80 s), a fixed seed.
WRITE_INTERVAL_S = 0.004
MAX_WRITES = 20_000
WRITTEN_BLOCKS = 6  # the writer writes the LV's first 6 of 16 blocks: the others must not be rewritten
# What a process writes besides the image's blocks: the manifest (a few KiB, twice) and sidecars.
SLACK = 256 * 1024

WRITER = textwrap.dedent("""
    import os, random, select, sys
    path, off, size, interval, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
    rnd = random.Random(15)
    fd = os.open(path, os.O_WRONLY)
    print("ready", flush=True)
    for _ in range(n):  # until told to stop (a line on stdin), at most n writes
        at = off + rnd.randrange(size // 4096) * 4096
        os.pwrite(fd, rnd.randbytes(4096), at)
        if select.select([sys.stdin], [], [], interval)[0]:
            break
    os.close(fd)
""")

# The CLI in a process that reports its own /proc/self/io when it ends.
MEASURED = textwrap.dedent("""
    import os, sys
    sys.argv = ["euca2kvm", *sys.argv[2:]]
    out = os.environ["IO_REPORT"]
    try:
        from euca2kvm.cli import run
        run()
    finally:
        with open(out, "w") as f:
            f.write(open("/proc/self/io").read())
""")


def cli(*args: str, check: int | None = 0, io: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", MEASURED, "-"] if io else [sys.executable, "-m", "euca2kvm"]
    env = {**os.environ, "IO_REPORT": str(io)} if io else None
    p = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=300, env=env)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert "Traceback" not in p.stderr
    return p


def write_bytes(io: Path, field: str = "write_bytes") -> int:
    """A counter of /proc/<pid>/io: ``write_bytes`` (pages dirtied) or ``wchar`` (bytes passed to write calls)."""
    return int(dict(ln.split(": ") for ln in io.read_text().splitlines())[field])


@pytest.fixture
def container(tmp_path: Path) -> dict[str, Any]:
    """A fresh container with one linear LV filled with random bytes; its file, LV offset and size."""
    need_root()
    need_tools("lvm", "losetup")
    d = tmp_path / "vols"
    d.mkdir()
    c = linear_container(d, "vg-warm", "lv-warm", LV_MIB)
    with open(c["file"], "r+b") as f:
        f.seek(c["offset"])
        f.write(os.urandom(LV_MIB * MiB // 2))  # half data, half never written (holes)
    return c


def lv_bytes(c: dict[str, Any]) -> bytes:
    with open(c["file"], "rb") as f:
        f.seek(c["offset"])
        return f.read(c["size"])


def differing_blocks(a: bytes, b: bytes) -> int:
    return sum(1 for o in range(0, len(a), BLOCK) if a[o : o + BLOCK] != b[o : o + BLOCK])


def entry_of(out: Path) -> dict[str, Any]:
    vols = json.loads((out / "manifest.json").read_text())["volumes"]
    assert len(vols) == 1
    return vols[0]


def test_warm_pass_then_sync_gives_final_bytes_writing_only_changed_blocks(container: dict[str, Any],
                                                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    image = out / "vg-warm_lv-warm.raw"
    image.write_bytes(os.urandom(MiB))  # garbage under the final name
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(container["file"]), str(container["offset"]),
                               str(WRITTEN_BLOCKS * BLOCK), str(WRITE_INTERVAL_S), str(MAX_WRITES)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        src = ["--source", str(container["dir"]), "-o", str(out)]
        # held open by the writer: a plain export is refused, a warm pass reads it anyway
        cli("export", IDENT, *src, check=4)
        assert not image.with_name(image.name + ".blocks").exists()
        cli("export", IDENT, *src, "--warm")
        e = entry_of(out)
        assert e["consistent"] is False and e["warm"]["started_at"] <= e["warm"]["ended_at"]
        car = sidecar.load(out, e["blocks"], container["size"])
        assert car.folded() == e["digest"] == file_blkdigest(image)
        # --sync refuses while the instance (the writer) still holds the volume: in-use checks are back on
        cli("export", IDENT, *src, "--sync", check=4)
        assert writer.stdin is not None
        writer.stdin.write("stop\n")
        writer.stdin.close()
        assert writer.wait(timeout=60) == 0
    finally:
        writer.kill()
        writer.wait()
    warm_image = image.read_bytes()
    final = lv_bytes(container)
    changed = differing_blocks(warm_image, final)
    assert 0 < changed <= WRITTEN_BLOCKS  # the writer ran on after the pass
    with open(image, "rb+") as f:  # flushed: write_bytes (counted when a clean page is dirtied) sees every page
        os.fsync(f.fileno())
    io = tmp_path / "io"
    done = cli("export", IDENT, *src, "--sync", io=io)
    e = entry_of(out)
    # the result line tells this pass's time and counts, not the first pass's
    line = " ".join(done.stdout.split())
    assert f"synced in {e['delta']['seconds']:.2f} s: {changed} of {e['delta']['blocks']} blocks changed" in line, line
    assert hashlib.sha256(image.read_bytes()).digest() == hashlib.sha256(final).digest()
    assert e["consistent"] is True and "sync_in_progress" not in e
    assert e["delta"]["blocks_changed"] == changed and e["delta"]["bytes_written"] == changed * BLOCK
    assert changed * BLOCK <= write_bytes(io, "write_bytes") <= changed * BLOCK + SLACK
    assert changed * BLOCK <= write_bytes(io, "wchar") <= changed * BLOCK + SLACK
    assert e["digest"] == file_blkdigest(image)
    # an unchanged volume: a sync writes nothing into the image
    before = image.stat().st_mtime_ns
    cli("export", IDENT, *src, "--sync", io=io)
    assert entry_of(out)["delta"]["bytes_written"] == 0 and write_bytes(io, "wchar") <= SLACK
    quick = cli("export", IDENT, *src, "--sync", "--no-verify", io=io)
    assert "the image is not read back" in quick.stderr and "no digest is computed" not in quick.stderr
    assert entry_of(out)["delta"]["bytes_written"] == 0 and write_bytes(io, "wchar") <= SLACK
    assert image.stat().st_mtime_ns == before
    cli("verify", str(out / "manifest.json"))


def test_several_warm_passes_and_an_interrupted_sync_resume(container: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    src = ["--source", str(container["dir"]), "-o", str(out)]
    cli("export", IDENT, *src, "--warm")
    image = out / "vg-warm_lv-warm.raw"
    with open(container["file"], "r+b") as f:  # two blocks changed
        for blk in (1, 9):
            f.seek(container["offset"] + blk * BLOCK + 4096)
            f.write(os.urandom(4096))
    cli("export", IDENT, *src, "--warm")  # a second warm pass narrows the delta
    e = entry_of(out)
    assert e["consistent"] is False and e["delta"]["blocks_changed"] == 2 and e["warm"]["passes"] == 2
    plan = json.loads(cli("plan", "--cutover", "-o", str(out), "--json").stdout)
    jsonschema.validate(plan, json.loads(CUTOVER_SCHEMA.read_text()))
    assert [(r["id"], r["passes"], r["blocks"]) for r in plan["cutover"]] == [(IDENT, 2, LV_MIB // 4)]
    with open(container["file"], "r+b") as f:
        f.seek(container["offset"] + 3 * BLOCK)
        f.write(os.urandom(4096))
    # an interrupted sync: the image is damaged in that block and the entry left as a sync leaves it
    car = sidecar.load(out, e["blocks"], container["size"])
    car.digests[3] = sidecar.UNKNOWN
    from euca2kvm.export import manifest
    from euca2kvm.outdir import OutDir

    with OutDir(out) as od:
        marked = {**e, "sync_in_progress": True, "blocks": sidecar.write(od, image.name + ".blocks", car)}
    manifest.record(out, marked)
    with open(image, "r+b") as f:
        f.seek(3 * BLOCK)
        f.write(b"\xff" * 100)
    cli("export", IDENT, *src, "--sync")
    e = entry_of(out)
    assert e["consistent"] is True and e["delta"]["blocks_changed"] == 1
    assert image.read_bytes() == lv_bytes(container)
    with open(container["file"], "r+b") as f:  # written once more; a sync without the whole-image read back
        f.seek(container["offset"] + 14 * BLOCK)
        f.write(os.urandom(4096))
    cli("export", IDENT, *src, "--sync", "--no-verify")
    e = entry_of(out)
    assert e["consistent"] is True and e["verified"] is False and e["delta"]["blocks_changed"] == 1
    assert image.read_bytes() == lv_bytes(container) and e["digest"] == file_blkdigest(image)


def test_resize_during_warm_pass_fails_cleanly(container: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    vol = discover([str(container["dir"])], check_in_use=False).find(IDENT)
    from euca2kvm.cli.export_cmd import volume_source

    grown = [False]

    def grow(_: int) -> None:
        if not grown[0]:
            grown[0] = True
            with open(container["file"], "ab") as f:
                f.write(bytes(MiB))

    opts = ExportOptions(fmt=output_format("raw"), workers=1, warm=True)
    with pytest.raises(IOFailure) as err:
        export_pass(volume_source(vol), out, opts, False, progress=grow)
    assert err.value.exit_code == EXIT_IO
    assert sorted(p.name for p in out.iterdir()) == []  # nothing published, no manifest, no sidecar


def test_qcow2_sync_through_qemu_nbd(container: dict[str, Any], tmp_path: Path) -> None:
    need_tools("qemu-img", "qemu-nbd")
    out = tmp_path / "out"
    src = ["--source", str(container["dir"]), "-o", str(out), "--format", "qcow2"]
    cli("export", IDENT, *src, "--warm")
    e = entry_of(out)
    car = sidecar.load(out, e["blocks"], container["size"])
    assert car.folded() == e["digest"] and e["consistent"] is False
    with open(container["file"], "r+b") as f:  # three blocks changed, one of them in the never-written half
        for blk in (0, 5, 12):
            f.seek(container["offset"] + blk * BLOCK + 8192)
            f.write(os.urandom(4096))
    cli("export", IDENT, *src, "--sync")
    e = entry_of(out)
    assert e["consistent"] is True and e["delta"]["blocks_changed"] == 3 and e["delta"]["bytes_written"] == 3 * BLOCK
    ref = tmp_path / "ref.raw"
    ref.write_bytes(lv_bytes(container))
    assert qemu_img.compare(str(ref), str(out / "vg-warm_lv-warm.qcow2"), fmt_a="raw", fmt_b="qcow2")
    cli("verify", str(out / "manifest.json"))
    # a compressed image is never rewritten in place (its new clusters would not be compressed)
    packed = [*src[:2], "-o", str(tmp_path / "packed"), "--format", "qcow2", "--compress"]
    cli("export", IDENT, *packed, "--warm")
    cli("export", IDENT, *packed, "--sync", check=EXIT_FORMAT)


def test_sync_without_warm_pass_and_bad_sidecar(container: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    src = ["--source", str(container["dir"]), "-o", str(out)]
    cli("export", IDENT, *src, "--sync", check=EXIT_USAGE)
    cli("export", IDENT, *src, "--warm")
    blocks = out / "vg-warm_lv-warm.raw.blocks"
    data = bytearray(blocks.read_bytes())
    data[-1] ^= 1
    blocks.write_bytes(bytes(data))
    cli("export", IDENT, *src, "--sync", check=EXIT_FORMAT)
    assert entry_of(out)["consistent"] is False
    cli("export", IDENT, *src, "--warm", "--overwrite")  # what the refusal advises: a fresh first pass
    cli("export", IDENT, *src, "--sync")
    assert entry_of(out)["consistent"] is True
    with open(out / "vg-warm_lv-warm.raw", "r+b") as f:  # an image damaged where the sidecar says nothing changed
        f.seek(10 * BLOCK + 77)
        f.write(b"\x5a")
    cli("export", IDENT, *src, "--sync", check=EXIT_VERIFY)  # the whole image is verified, not only the delta
    assert entry_of(out)["consistent"] is False


def test_warm_pass_after_a_plain_export_keeps_block_digests(container: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    src = ["--source", str(container["dir"]), "-o", str(out)]
    cli("export", IDENT, *src)
    assert "blocks" not in entry_of(out)
    cli("export", IDENT, *src, "--warm")  # the plain export still verifies, but has no sidecar: exported again
    e = entry_of(out)
    assert e["consistent"] is False and sidecar.load(out, e["blocks"], container["size"]).folded() == e["digest"]


def test_delta_passes_read_source_and_image_once_and_hash_only_what_differs(container: dict[str, Any],
                                                                            tmp_path: Path) -> None:
    """A raw image's delta passes read the source once and the image once: /proc/<pid>/io rchar of --warm
    again and --sync is at most 2 x the disk + the rewritten blocks twice (read to be written, read
    back), --sync --no-verify reads only the source (and the rewritten blocks back); each gives the
    source's bytes and a digest that is the image's; a damaged image block is still found."""
    out = tmp_path / "out"
    src = ["--source", str(container["dir"]), "-o", str(out)]
    cli("export", IDENT, *src, "--warm")
    image = out / "vg-warm_lv-warm.raw"
    size = container["size"]
    io = tmp_path / "io"
    # what discovery, manifests and sidecars read besides the disk's bytes (measured: about 32 KiB)
    slack = 2 * MiB

    def change(*blocks: int) -> None:
        with open(container["file"], "r+b") as f:
            for blk in blocks:
                f.seek(container["offset"] + blk * BLOCK + 12288)
                f.write(os.urandom(4096))

    for extra, changed in ((["--warm"], (2, 11)), (["--sync"], (4,)), (["--sync", "--no-verify"], (7, 8))):
        change(*changed)
        cli("export", IDENT, *src, *extra, io=io)
        e = entry_of(out)
        reads = 1 if "--no-verify" in extra else 2
        assert e["delta"]["blocks_changed"] == len(changed), extra
        # the changed blocks read again to be rewritten, then read back (raw)
        again = 2 * len(changed) * BLOCK
        assert write_bytes(io, "rchar") <= reads * size + again + slack, extra
        assert image.read_bytes() == lv_bytes(container), extra
        assert e["digest"] == file_blkdigest(image), extra
    # a block of the image damaged where the source did not change: the comparison finds it (exit 6)
    with open(image, "r+b") as f:
        f.seek(13 * BLOCK + 5)
        byte = f.read(1)[0]
        f.seek(13 * BLOCK + 5)
        f.write(bytes([byte ^ 0xFF]))
    cli("export", IDENT, *src, "--sync", check=EXIT_VERIFY)
    assert entry_of(out)["consistent"] is False


def test_no_verify_trusts_only_an_image_nothing_wrote_since_the_last_pass(container: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    """Every pass records the image's stamp; --sync --no-verify skips reading the image back only while
    it still has that stamp. An image written since (same bytes, or one byte changed where the source
    did not change) is verified against the source instead: the damage is found (exit 6)."""
    out = tmp_path / "out"
    src = ["--source", str(container["dir"]), "-o", str(out)]
    cli("export", IDENT, *src, "--warm")
    image = out / "vg-warm_lv-warm.raw"
    assert entry_of(out)["image"] == safefs.stamp(image.stat())
    io = tmp_path / "io"
    size = container["size"]

    def change(blk: int) -> None:
        with open(container["file"], "r+b") as f:
            f.seek(container["offset"] + blk * BLOCK + 4096)
            f.write(os.urandom(4096))

    change(2)
    quick = cli("export", IDENT, *src, "--sync", "--no-verify", io=io)  # as the warm pass left it: trusted
    e = entry_of(out)
    assert "verifying the whole image" not in quick.stderr and e["verified"] is False
    assert write_bytes(io, "rchar") <= size + 2 * BLOCK + 2 * MiB  # the source, the block twice, metadata
    assert e["image"] == safefs.stamp(image.stat()) and image.read_bytes() == lv_bytes(container)
    # written since, the same bytes (its times moved): verified, and so recorded
    os.utime(image)
    change(5)
    warned = cli("export", IDENT, *src, "--sync", "--no-verify", io=io)
    e = entry_of(out)
    assert "it was written since the last pass" in warned.stderr and "verifying the whole image" in warned.stderr
    assert e["verified"] is True and e["consistent"] is True and e["delta"]["blocks_changed"] == 1
    assert write_bytes(io, "rchar") >= size + size // 2  # the whole image read too, besides the data half
    assert image.read_bytes() == lv_bytes(container) and e["image"] == safefs.stamp(image.stat())
    # one byte of the image changed where the source did not: --no-verify finds it
    with open(image, "r+b") as f:
        f.seek(9 * BLOCK + 77)
        byte = f.read(1)[0]
        f.seek(9 * BLOCK + 77)
        f.write(bytes([byte ^ 0x01]))
    bad = cli("export", IDENT, *src, "--sync", "--no-verify", check=EXIT_VERIFY)
    assert "block 9" in bad.stderr and entry_of(out)["consistent"] is False
    # a manifest entry with no stamp (written before stamps were recorded): verified as well
    from euca2kvm.export import manifest

    cli("export", IDENT, *src, "--warm", "--overwrite")
    manifest.record(out, {k: v for k, v in entry_of(out).items() if k != "image"})
    change(6)
    old = cli("export", IDENT, *src, "--sync", "--no-verify")
    assert "has no stamp of it" in old.stderr and entry_of(out)["verified"] is True
    assert image.read_bytes() == lv_bytes(container)


def test_verified_sync_hashes_only_the_blocks_that_differ(container: dict[str, Any], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """--sync of a raw image compares the image with the source instead of hashing every block: one
    changed block is hashed twice (as compared, as read again to be written), nothing else is; the
    image is then the source's bytes and its recorded digest the image's."""
    out = tmp_path / "out"
    cli("export", IDENT, "--source", str(container["dir"]), "-o", str(out), "--warm")
    with open(container["file"], "r+b") as f:
        f.seek(container["offset"] + 5 * BLOCK + 4096)
        f.write(os.urandom(4096))
    from euca2kvm.cli.export_cmd import volume_source
    from euca2kvm.export.digest import Algorithm

    hashed: list[int] = []
    block = Algorithm.block

    def counted(self: Algorithm, data: Any) -> bytes:
        hashed.append(len(data))
        return block(self, data)

    monkeypatch.setattr(Algorithm, "block", counted)
    vol = discover([str(container["dir"])], check_in_use=False).find(IDENT)
    entry, _ = export_pass(volume_source(vol), out, ExportOptions(fmt=output_format("raw"), warm=True), True)
    assert entry["consistent"] is True and entry["delta"]["blocks_changed"] == 1
    assert hashed == [BLOCK, BLOCK]  # the LV's 8 data blocks are not all hashed
    image = out / "vg-warm_lv-warm.raw"
    assert image.read_bytes() == lv_bytes(container)
    monkeypatch.undo()
    assert entry["digest"] == file_blkdigest(image)


def test_cutover_estimate_from_the_last_two_passes() -> None:
    from euca2kvm.export.warm import cutover

    gib = 1 << 30
    entry = {"id": "vol-1", "size": 8 * gib, "consistent": False, "bytes_read": 8 * gib, "seconds": 80.0,
             "warm": {"passes": 2, "ended_at": "2026-12-01T10:10:00Z"},
             "delta": {"since": "2026-12-01T10:00:00Z", "blocks_changed": 60, "bytes_read": 8 * gib,
                       "seconds": 40.0}}
    t0 = 1796119800.0  # 2026-12-01T10:10:00Z
    r = cutover(entry, t0 + 300)  # 5 minutes after the last pass, 0.1 block/s
    assert r["changed_blocks_per_s"] == 0.1 and r["expected_changed_blocks"] == 30
    assert r["estimated_seconds"] == round((2 * 8 * gib + 30 * BLOCK) / (8 * gib / 40), 1)
    assert cutover(entry, t0 + 10 ** 9)["expected_changed_blocks"] == 2048  # never more than every block
    one_pass = {k: v for k, v in entry.items() if k != "delta"}
    assert cutover(one_pass, t0)["estimated_seconds"] is None  # no change rate after a single pass


def test_export_instance_warm_while_held_then_sync(tmp_path: Path) -> None:
    """An instance whose volume a tgt target serves (a tgtadm stand-in on PATH): refused plainly, read by
    --warm with a warning, refused by --sync while still served, synced once the target is gone."""
    need_root()
    need_tools("lvm", "losetup")
    vid, iid = "vol-3a4b0001", "i-3a4b0001"
    d = tmp_path / "vols"
    d.mkdir()

    def setup(lvm: Any, devs: list[str]) -> None:
        lvm("pvcreate", devs[0])
        lvm("vgcreate", f"euca-ebs-storage-vg-{vid}", devs[0])
        lvm("lvcreate", "--addtag", vid, "-n", f"euca-{vid}", "-l", "100%FREE", f"euca-ebs-storage-vg-{vid}")

    lv = with_lvm(d, {vid: 12 * MiB + 4 * MiB}, setup)[f"euca-{vid}"]
    area = lv["segments"][0]["areas"][0]
    c = {"file": d / vid, "offset": area["pe_start"] + area["pe_first"] * lv["extent_size"], "size": lv["size"]}
    inv = tmp_path / "inventory.json"
    inv.write_text(json.dumps({
        "format": "euca2kvm-inventory", "version": 1, "source": "test", "captured_at": "2024-05-01T10:00:00Z",
        "volumes_dir": str(d), "storage_volumes": [],
        "instances": [{"id": iid, "state": "running", "root_device": "/dev/sda", "kernel_id": None,
                       "vm_type": {"name": "m1.small", "cpus": 1, "memory_mib": 256},
                       "attachments": [{"volume_id": vid, "device": "/dev/sda", "is_root": True, "kind": "boot"}]}]}))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "tgtadm").write_text(
        "#!/bin/sh\ncat <<'EOF'\nTarget 7: iqn.2009-06.com.eucalyptus.one:store7\n    LUN information:\n"
        f"        LUN: 1\n            Backing store path: /dev/euca-ebs-storage-vg-{vid}/euca-{vid}\nEOF\n")
    (bindir / "tgtadm").chmod(0o755)
    served = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    out = tmp_path / "out"
    args = [sys.executable, "-m", "euca2kvm", "export-instance", iid, "--inventory", str(inv), "-o", str(out)]

    def run(*extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([*args, *extra], capture_output=True, text=True, timeout=300, env=env)
        assert "Traceback" not in p.stderr
        return p

    assert run(env=served).returncode == 4 and not out.exists()
    assert run("--warm", env=served).returncode == 0
    image = out / f"{iid}-sda.raw"
    assert entry_of_image(out, image)["consistent"] is False
    with open(c["file"], "r+b") as f:  # the guest writes on
        f.seek(c["offset"] + BLOCK + 512)
        f.write(os.urandom(4096))
    assert run("--sync", env=served).returncode == 4
    inv.write_text(inv.read_text().replace('"running"', '"stopped"'))  # the inventory after the instance stopped
    p = run("--sync")
    assert p.returncode == 0, p.stderr
    e = entry_of_image(out, image)
    assert e["consistent"] is True and e["delta"]["blocks_changed"] == 1 and (out / f"{iid}.xml").exists()
    assert image.read_bytes() == lv_bytes(c)


def entry_of_image(out: Path, image: Path) -> dict[str, Any]:
    return next(v for v in json.loads((out / "manifest.json").read_text())["volumes"] if v["output"] == str(image))


def test_bench_warm_smoke(tmp_path: Path) -> None:
    """bench/bench_warm.py keeps working: one tiny run reports every number, the sync wrote the changed block."""
    bench = Path(__file__).resolve().parents[2] / "bench" / "bench_warm.py"
    res = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(bench), "--size", "32M", "--runs", "1", "--workdir", str(tmp_path / "w"),
                        "--json", str(res)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    med = json.loads(res.read_text())["median"]
    # (a raw image's --sync verifies within its digest pass: no separate verify seconds)
    assert med["bytes_written"] == med["changed_bytes"] == BLOCK
    cpu = {k for k in med if k.endswith(("_user_s", "_sys_s"))}  # a 32 MiB cat may take less than a tick
    assert cpu and all(med[k] >= 0 for k in cpu) and med["sync_user_s"] > 0
    assert all(med[k] > 0 for k in med if k not in cpu and k != "sync_verify_s")


def test_read_back_of_a_rewritten_block(tmp_path: Path) -> None:
    """``holds``: the image's bytes at an offset compared with what was written; a changed byte is a
    mismatch, an image ending before the block's end an IOFailure naming the image."""
    from euca2kvm.export.sync import holds

    data = os.urandom(3 * MiB + 5)
    img = tmp_path / "img.raw"
    img.write_bytes(b"\0" * MiB + data)
    fd = os.open(img, os.O_RDONLY)
    try:
        assert holds(fd, MiB, memoryview(data), str(img))
        bad = bytearray(data)
        bad[-1] ^= 1
        assert not holds(fd, MiB, memoryview(bad), str(img))
        with pytest.raises(IOFailure) as ei:
            holds(fd, 2 * MiB, memoryview(data), str(img))
        assert ei.value.exit_code == EXIT_IO and str(img) in str(ei.value)
    finally:
        os.close(fd)
