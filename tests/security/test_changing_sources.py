# SPDX-License-Identifier: Apache-2.0
"""Sources that change while they are exported: truncated, written, their metadata rewritten with
the mtime restored. Every case ends in exit 5 naming the file, with nothing published (an
earlier image under the final name stays as it was), no partial file, no traceback and no
SIGBUS; the image digest and the NBD server report a shrunk source as an error too.

The change is made at a known point: the CLI runs in a subprocess whose ``export_source`` is
wrapped so that the first progress report (the first block copied, or qemu-img's first
percentage) changes the source. A SIGBUS there kills only that subprocess (exit -7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _env import need_tools
from euca2kvm.errors import EXIT_IO, IOFailure, ToolError
from euca2kvm.lvm.extents import ExtentMap, LinearMapper
from security.containers import EXTENT, PE_START, MiB, assert_clean_failure, make

VID = "vol-c4a9e5ed"
# At the first progress report of the export, truncate the source or write a file's bytes into it
# (argv[1], JSON), and restore its mtime if asked.
DRIVER = r"""
import json, os, sys
from euca2kvm.cli import export_cmd, main

act = json.loads(sys.argv[1])
real = export_cmd.export_source

def change():
    path = act["path"]
    st = os.stat(path)
    if "truncate" in act:
        os.truncate(path, act["truncate"])
    else:
        with open(act["data"], "rb") as d, open(path, "r+b") as f:
            f.seek(act["offset"])
            f.write(d.read())
    if act.get("restore_mtime"):
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

def hooked(src, outdir, opts, progress=None, **kwargs):
    fired = []
    def on_progress(n):
        if progress is not None:
            progress(n)
        if not fired:
            fired.append(1)
            change()
    return real(src, outdir, opts, on_progress, **kwargs)

export_cmd.export_source = hooked
sys.exit(main(sys.argv[2:]))
"""


def export_while(action: dict[str, object], vols: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", DRIVER, json.dumps(action), "export", VID, "--source", str(vols),
                           "-o", str(out), *args], capture_output=True, text=True, timeout=180)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path, bytes]:
    """A 64 MiB overlay volume (16 digest blocks) and an output directory holding garbage under the
    final names (an earlier export that must survive a refused one)."""
    vols = tmp_path / "volumes"
    vols.mkdir()
    c = make(vols / VID, f"euca-ebs-storage-vg-{VID}", f"euca-{VID}", 7, extents=16)
    out = tmp_path / "out"
    out.mkdir()
    garbage = os.urandom(1 << 16)
    for ext in ("raw", "qcow2"):
        (out / f"{VID}.{ext}").write_bytes(garbage)
    return vols, c.path, out, garbage


def assert_refused(p: subprocess.CompletedProcess[str], source: Path, out: Path, garbage: bytes) -> None:
    assert_clean_failure(p, EXIT_IO)
    assert str(source) in p.stderr, p.stderr[-2000:]
    for ext in ("raw", "qcow2"):
        assert (out / f"{VID}.{ext}").read_bytes() == garbage  # nothing published over the earlier image
    left = [f for f in out.rglob("*") if f.is_file() and f.name not in (f"{VID}.raw", f"{VID}.qcow2")]
    assert not [f for f in left if "partial" in f.name or f.stat().st_size > (1 << 20)], left
    assert not (out / "manifest.json").exists() or VID not in (out / "manifest.json").read_text()


@pytest.mark.parametrize("workers", ["1", "4"])
def test_truncated_during_raw_copy_is_exit_5_never_sigbus(setup: tuple[Path, Path, Path, bytes],
                                                          workers: str) -> None:
    vols, src, out, garbage = setup
    p = export_while({"path": str(src), "truncate": PE_START + 2 * MiB + 512}, vols, out, "--workers", workers)
    assert_refused(p, src, out, garbage)


def test_truncated_during_qcow2_convert_is_exit_5(setup: tuple[Path, Path, Path, bytes]) -> None:
    need_tools("qemu-img")
    vols, src, out, garbage = setup
    p = export_while({"path": str(src), "truncate": PE_START + 3 * MiB}, vols, out, "--format", "qcow2")
    assert_refused(p, src, out, garbage)


@pytest.mark.parametrize("verify", [[], ["--no-verify"]])
def test_written_during_copy_is_refused_not_a_torn_image(setup: tuple[Path, Path, Path, bytes],
                                                        verify: list[str]) -> None:
    vols, src, out, garbage = setup
    data = out.parent / "data"
    data.write_bytes(os.urandom(MiB))
    p = export_while({"path": str(src), "offset": PE_START + 10 * EXTENT, "data": str(data)}, vols, out, *verify)
    assert_refused(p, src, out, garbage)


def test_metadata_rewritten_with_restored_mtime_during_copy_is_refused(tmp_path: Path,
                                                                        setup: tuple[Path, Path, Path, bytes]) -> None:
    """The LV moved to other extents by a metadata rewrite (new seqno), size and mtime kept."""
    vols, src, out, garbage = setup
    c = make(tmp_path / "scratch", f"euca-ebs-storage-vg-{VID}", f"euca-{VID}", 7, extents=8, pe_count=16)
    c.start_pe, c.seqno = 8, 2
    head = tmp_path / "head"
    head.write_bytes(c.head())
    p = export_while({"path": str(src), "offset": 0, "data": str(head), "restore_mtime": True}, vols, out)
    assert_refused(p, src, out, garbage)


def test_metadata_rewritten_after_the_scan_is_seen_by_the_recheck(setup: tuple[Path, Path, Path, bytes],
                                                                  tmp_path: Path) -> None:
    """Without the file's times (taken after the rewrite), the metadata re-read alone refuses it."""
    from euca2kvm.cli.export_cmd import volume_source
    from euca2kvm.eucalyptus.discovery import discover
    from euca2kvm.export.pipeline import check_unchanged, fingerprint

    vols, src, _, _ = setup
    source = volume_source(discover([str(vols)], check_in_use=False).find(VID))
    c = make(tmp_path / "scratch", f"euca-ebs-storage-vg-{VID}", f"euca-{VID}", 7, extents=16)
    c.seqno = 2
    with open(src, "r+b") as f:
        f.write(c.head())
    with pytest.raises(IOFailure) as ei:
        check_unchanged(source, fingerprint([str(src)]))
    assert str(src) in str(ei.value)
    c.seqno = 1  # the scanned copy again: unchanged
    with open(src, "r+b") as f:
        f.write(c.head())
    check_unchanged(source, fingerprint([str(src)]))


DIGEST_DRIVER = r"""
import os, sys
from euca2kvm.errors import IOFailure
from euca2kvm.export.copy import copy_blocks
from euca2kvm.lvm.source import file_source

path, size = sys.argv[1], os.path.getsize(sys.argv[1])
fired = []

def shrink(n):
    if not fired:
        fired.append(n)
        os.truncate(path, 5 << 20)

try:
    copy_blocks(file_source(path, size), None, workers=4, progress=shrink)
except IOFailure as e:
    print(e)
    sys.exit(e.exit_code)
"""


def test_image_digest_of_a_shrinking_file_is_an_io_error(tmp_path: Path) -> None:
    """The reader ``verify`` and the resume check digest images with (in a subprocess: a SIGBUS
    would take pytest with it)."""
    path = tmp_path / "disk.raw"
    # 16 blocks: with 4 workers at most 4 + EXTRA_INFLIGHT blocks are read before the first
    # progress call truncates the file, so later blocks always meet the shorter file.
    path.write_bytes(os.urandom(64 * MiB))
    p = subprocess.run([sys.executable, "-c", DIGEST_DRIVER, str(path)], capture_output=True, text=True,
                       timeout=60)
    assert_clean_failure(p, EXIT_IO)
    assert str(path) in p.stdout


def test_nbd_server_reading_a_shrunk_source_fails_the_client_cleanly(tmp_path: Path) -> None:
    need_tools("qemu-img")
    from euca2kvm.export import qemu_img
    from euca2kvm.export.nbd import serve
    from euca2kvm.lvm.source import LvmSource

    path = tmp_path / "src.bin"
    path.write_bytes(os.urandom(8 * MiB))
    halves = [LinearMapper(0, 4 * MiB, str(path), 4 * MiB), LinearMapper(4 * MiB, 4 * MiB, str(path), 0)]
    emap = ExtentMap(8 * MiB, halves)  # two ranges: read through the NBD server
    with serve(LvmSource(emap)) as srv:
        os.truncate(path, 3 * MiB)
        with pytest.raises((ToolError, IOFailure)):  # qemu-img's "Input/output error" is exit 5
            qemu_img.convert(srv.uri, str(tmp_path / "out.raw"), "raw", {})
        assert not srv.failures
