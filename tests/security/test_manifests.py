# SPDX-License-Identifier: Apache-2.0
"""Hostile manifests: the loader returns a valid manifest or raises FormatError, never anything else;
verify and export exit 3 on them without a traceback and write nothing; outputs that leave the
manifest's directory, pass through a symbolic link or are not regular files are refused without
being opened (FIFO traps); verify checks and reports every entry and exits with the most severe
status."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from _env import need_tools
from euca2kvm.errors import EXIT_FORMAT, EXIT_IO, EXIT_OK, EXIT_VERIFY, FormatError
from euca2kvm.export import manifest, manifestcheck
from euca2kvm.export.imagedigest import image_digest
from security.fifotrap import FifoTrap

MiB = 1 << 20
VOL = "vol-5ec0e001"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def entry(**over: Any) -> dict[str, Any]:
    """An entry with every field today's writers put in one (pipeline, gzsource, export-instance,
    --libvirt, --boot-test)."""
    e: dict[str, Any] = {
        "id": "i-3f2a91c0-sda1", "kind": "overlay", "vg": "euca-ebs-storage-vg-vol-4708bf47", "lv": "euca-vol-4708bf47",
        "segment_types": ["striped"], "volume_id": "vol-4708bf47", "instance": "i-3f2a91c0", "device": "/dev/sda1",
        "attachment": "boot", "target_dev": "vda", "boot": True, "size": 8 * MiB,
        "digest": "blkblake3-4m:" + "ab" * 32, "output": "/srv/export/i-3f2a91c0-sda1.qcow2", "format": "qcow2",
        "format_options": {"compat": "1.1"}, "compressed": False, "files": ["/var/lib/eucalyptus/volumes/vol-4708bf47"],
        "source": [{"path": "/var/lib/eucalyptus/volumes/vol-4708bf47", "size": 9 * MiB, "mtime_ns": 1 << 60}],
        "verified": True, "estimated_bytes": 8 * MiB, "allocated_bytes": 4096, "exported_at": "2026-12-01T10:00:00Z",
        "seconds": 1.25, "bytes_read": 1, "bytes_written": 1, "sha256": "cd" * 32, "gzip_members": 1,
        "compressed_size": 77, "domain": "/srv/export/i-3f2a91c0.xml",
        "libvirt": {"domain": "/srv/export/x.xml", "virt_install": "/srv/export/x.virt-install.sh"},
        "boot_test": {"ok": True, "stage": "login", "screenshot": None, "seconds": 3.5},
    }
    e.update(over)
    return e


def doc(*entries: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"format": manifest.FORMAT, "version": manifest.VERSION, "volumes": list(entries), **top}


def outcome(raw: bytes) -> dict[str, Any] | None:
    """The loader's verdict: the manifest (checked to have the promised shape) or None for FormatError."""
    try:
        data = manifestcheck.parse(raw, "manifest.json")
    except FormatError:
        return None
    assert isinstance(data, dict) and isinstance(data["volumes"], list)
    for v in data["volumes"]:
        assert isinstance(v["id"], str) and isinstance(v["output"], str)
        assert v.get("format", "raw") in ("raw", "qcow2", "vmdk", "vhdx", "vpc", "vdi")
        assert v.get("digest") is None or isinstance(v["digest"], str)
        assert isinstance(v.get("size", 0), int) and not isinstance(v.get("size", 0), bool)
    version = data.get("version", 1)
    assert isinstance(version, int | float) and not isinstance(version, bool) and version <= manifest.VERSION
    return data


def test_entries_written_today_validate() -> None:
    e = entry()
    assert outcome(json.dumps(doc(e, entry(id="vol-1", digest=None, verified=False, kind=None, vg=None)),
                              indent=2).encode()) is not None
    assert outcome(json.dumps({"volumes": [{"id": "a", "output": "a.raw"}]}).encode()) is not None  # oldest form
    assert manifestcheck.schema()["properties"]["version"]["maximum"] == manifest.VERSION


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25)
FIELDS = ["id", "output", "format", "digest", "sha256", "size", "files", "source", "verified", "version"]


@FUZZ
@given(JSON)
def test_fuzz_random_json(value: Any) -> None:
    outcome(json.dumps(value).encode())
    outcome(json.dumps({"volumes": [value]}).encode())


@FUZZ
@given(st.sampled_from(FIELDS), JSON)
def test_fuzz_wrong_types_in_a_valid_manifest(field: str, value: Any) -> None:
    if field == "version":
        outcome(json.dumps(doc(entry(), version=value)).encode())
    else:
        outcome(json.dumps(doc(entry(**{field: value}))).encode())


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 1 << 16), st.sampled_from(["flip", "insert", "delete"]),
                          st.sampled_from(list(b'[]{}",:\\0123456789.eE-+ntfu\x00\xff'))), min_size=1, max_size=8))
def test_fuzz_mutated_valid_manifest(edits: list[tuple[int, str, int]]) -> None:
    raw = bytearray(json.dumps(doc(entry(), entry(id="b", output="b.raw", format="raw")), indent=1).encode())
    for pos, op, byte in edits:
        pos %= len(raw) + 1
        if op == "insert":
            raw[pos:pos] = bytes([byte])
        elif pos < len(raw):
            if op == "flip":
                raw[pos] = byte
            else:
                del raw[pos]
    outcome(bytes(raw))


@FUZZ
@given(st.integers(0, 100_000), st.sampled_from(["[", "{\"a\":", "[{\"k\":"]), st.booleans(),
       st.sampled_from(["top", "field", "string"]))
@example(100_000, "[", True, "top")
@example(100_000, "{\"a\":", False, "field")
@example(manifestcheck.MAX_DEPTH - 3, "[", True, "field")  # within the bound: loads
@example(manifestcheck.MAX_DEPTH + 1, "[", True, "top")
def test_fuzz_deep_nesting(depth: int, opener: str, closed: bool, where: str) -> None:
    closer = "".join({"[": "]", "{": "}"}[c] for c in opener if c in "[{")[::-1]
    nest = opener * depth + "1" + (closer * depth if closed else "")
    if where == "top":
        text = nest
    elif where == "field":
        text = '{"volumes": [{"id": "a", "output": "a.raw", "extra": ' + nest + "}]}"
    else:  # brackets inside a string are text, not nesting
        text = json.dumps({"volumes": [{"id": nest[:4000], "output": "a.raw"}]})
    data = outcome(text.encode())
    if where == "string":
        assert data is not None
    if where != "string" and depth > manifestcheck.MAX_DEPTH:
        assert data is None
    levels = depth * sum(c in "[{" for c in opener) + 3  # document > volumes > entry > the nest
    if where == "field" and closed and levels <= manifestcheck.MAX_DEPTH:
        assert data is not None


@pytest.mark.parametrize("text", [
    '{"volumes": [{"id": "a", "output": "a", "size": ' + "9" * 5000 + "}]}",
    '{"volumes": [{"id": "a", "output": "a", "size": 1e999}]}',
    '{"volumes": [{"id": "a", "output": "a", "seconds": -1e999}]}',
    '{"volumes": [{"id": "a", "output": "a", "size": NaN}]}',
    '{"volumes": [{"id": "a", "output": "a", "size": Infinity}]}',
    '{"volumes": [{"id": "a", "output": "a", "size": 18446744073709551616}]}',
    '{"volumes": [{"id": "a", "output": "a", "size": 1.5}]}',
    '{"volumes": [{"id": "a", "output": "a", "size": true}]}',
    '{"version": "abc", "volumes": []}', '{"version": 2, "volumes": []}', '{"version": 1.5, "volumes": []}',
    '{"format": "other", "volumes": []}', '{"volumes": {}}', '[]', '"x"', "", "\xff\xfe",
    '{"volumes": [{"id": "a", "output": 5}]}', '{"volumes": [{"id": "a"}]}', '{"volumes": [{"output": "a"}]}',
    '{"volumes": [{"id": "a", "output": "a", "format": "luks"}]}',
    '{"volumes": [{"id": "a", "output": "a", "digest": "x"}]}',
    '{"volumes": [{"id": "a", "output": "a", "source": [{"path": 1}]}]}',
])
def test_hostile_values_are_format_errors(text: str) -> None:
    assert outcome(text.encode("utf-8", "surrogateescape")) is None


def test_load_refuses_links_fifos_directories_and_oversize(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(doc(entry())))
    for kind in ("symlink", "fifo", "dir", "big"):
        d = tmp_path / kind
        d.mkdir()
        trap = None
        if kind == "symlink":
            (d / manifest.MANIFEST).symlink_to(good)
        elif kind == "fifo":
            trap = FifoTrap(d / manifest.MANIFEST)
        elif kind == "dir":
            (d / manifest.MANIFEST).mkdir()
        else:
            with open(d / manifest.MANIFEST, "wb") as f:
                f.truncate(manifest.MAX_MANIFEST_BYTES + 1)
        with pytest.raises(FormatError):
            manifest.load(d)
        if trap is not None:
            assert not trap.close(), "a FIFO manifest was opened"


# A fresh interpreter records entries one by one, as a batch does, and reads its manifest back; then
# the file is replaced by a hostile one of the same shape, which must still be refused.
OWN_WRITES = """
import json, os, sys
from pathlib import Path
from euca2kvm.errors import FormatError
from euca2kvm.export import manifest
out, e = Path(sys.argv[1]), json.loads(sys.argv[2])
for i in range(3):
    manifest.record(out, {**e, "id": f"vol-{i}", "output": str(out / f"vol-{i}.raw")}, fsync=False)
    assert len(manifest.load(out)["volumes"]) == i + 1
assert "jsonschema" not in sys.modules, "own writes were validated"
raw = (out / manifest.MANIFEST).read_bytes()
(out / manifest.MANIFEST).write_bytes(raw.replace(b'"size": 8388608', b'"size": "8388608"', 1))
try:
    manifest.load(out)
except FormatError:
    print("refused")
"""


def test_own_writes_read_back_unvalidated_and_other_bytes_still_refused(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-c", OWN_WRITES, str(tmp_path), json.dumps(entry())],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stdout.split() == ["refused"]


# -- through the CLI ---------------------------------------------------------------------------------

HOSTILE_MANIFESTS = {
    "deep": "[" * 100_000,
    "deep-in-entry": '{"volumes": [{"id": "a", "output": "a", "x": ' + "[" * 100_000 + "]" * 100_000 + "}]}",
    "version-abc": '{"format": "euca2kvm-manifest", "version": "abc", "volumes": []}',
    "version-2": '{"format": "euca2kvm-manifest", "version": 2, "volumes": []}',
    "nan": '{"volumes": [{"id": "a", "output": "a", "size": NaN}]}',
    "digits": '{"volumes": [{"id": "a", "output": "a", "size": ' + "7" * 100_000 + "}]}",
    "volumes-object": '{"volumes": {"id": "a"}}',
    "output-list": '{"volumes": [{"id": "a", "output": ["/etc/passwd"]}]}',
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MANIFESTS))
def test_verify_exits_3_on_hostile_manifests(tmp_path: Path, case: str, cli: Any) -> None:
    (tmp_path / manifest.MANIFEST).write_text(HOSTILE_MANIFESTS[case])
    cli("verify", str(tmp_path / manifest.MANIFEST), check=EXIT_FORMAT)


@pytest.mark.parametrize("case", ["deep", "version-abc", "digits", "output-list"])
def test_export_exits_3_on_hostile_manifests_and_writes_nothing(tmp_path: Path, case: str, cli: Any,
                                                                 volume: Any) -> None:
    src = tmp_path / "vols"
    src.mkdir()
    volume(src, VOL, 8)
    out = tmp_path / "out"
    out.mkdir()
    (out / manifest.MANIFEST).write_text(HOSTILE_MANIFESTS[case])
    cli("export", VOL, "--source", str(src), "-o", str(out), check=EXIT_FORMAT)
    assert (out / manifest.MANIFEST).read_text() == HOSTILE_MANIFESTS[case]
    assert not [n for n in os.listdir(out) if n != manifest.MANIFEST and not n.startswith(".euca2kvm.lock")]


def _raw_image(path: Path, seed: int) -> str:
    path.write_bytes(random.Random(seed).randbytes(2 * MiB))
    return image_digest(str(path), "raw").digest


def _write(out: Path, *entries: dict[str, Any]) -> None:
    (out / manifest.MANIFEST).write_text(json.dumps(doc(*entries)))


def _statuses(p: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {r["id"]: r["status"] for r in json.loads(p.stdout)}


def test_outputs_are_confined_to_the_manifests_directory(tmp_path: Path, cli: Any) -> None:
    top = tmp_path / "a" / "b"
    out = top / "out"
    out.mkdir(parents=True)
    digest = _raw_image(out / "good.raw", 1)
    outside = tmp_path / "a" / "outside"
    outside.mkdir()
    traps = {name: FifoTrap(outside / name) for name in ("dotdot", "abs", "link", "dirlink")}
    traps["inside"] = FifoTrap(out / "inside.fifo")
    (out / "link.raw").symlink_to(outside / "link")
    (out / "sub").symlink_to(outside)
    (out / "adir.raw").mkdir()
    entries = {
        "relative": "good.raw", "absolute-inside": str(out / "good.raw"), "dot-slash": "./good.raw",
        "proc": "/proc/self/mem", "dev": "../../../../../../../../dev/zero", "dotdot": "../outside/dotdot",
        "dotdot-deep": "../../outside/dotdot", "abs": str(outside / "abs"), "link": "link.raw",
        "dirlink": "sub/dirlink", "inside-fifo": "inside.fifo", "dir": "adir.raw", "empty-ish": ".",
        "abs-escape": str(out) + "/../outside/abs", "nul": "good.raw\x00x",
    }
    _write(out, *[{"id": k, "output": v, "format": "raw", "digest": digest} for k, v in entries.items()])
    try:
        p = cli("verify", str(out), "--json", check=EXIT_FORMAT, timeout=60)
    finally:
        opened = [name for name, t in traps.items() if t.close()]
    assert not opened, f"opened: {opened}"
    got = _statuses(p)
    assert {k: v for k, v in got.items() if v == "ok"} == dict.fromkeys(
        ["relative", "absolute-inside", "dot-slash"], "ok")
    assert {k for k, v in got.items() if v == "refused"} == set(entries) - {"relative", "absolute-inside", "dot-slash"}


def test_verify_checks_every_entry_and_exits_with_the_most_severe(tmp_path: Path, cli: Any) -> None:
    need_tools("qemu-img", "qemu-nbd")
    out = tmp_path / "out"
    out.mkdir()
    good = _raw_image(out / "good.raw", 1)
    other = _raw_image(out / "changed.raw", 2)
    assert good != other
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(out / "good.raw"), str(out / "bad.qcow2")],
                   check=True, capture_output=True, timeout=60)
    with open(out / "bad.qcow2", "r+b") as f:
        f.seek(40)  # l1_table_offset: qemu-img refuses the image
        f.write(b"\xff" * 8)
    ok = {"id": "a-ok", "output": "good.raw", "format": "raw", "digest": good}
    mismatch = {"id": "b-mismatch", "output": "changed.raw", "format": "raw", "digest": good}
    missing = {"id": "c-missing", "output": "gone.raw", "format": "raw", "digest": good}
    corrupt = {"id": "d-corrupt", "output": "bad.qcow2", "format": "qcow2", "digest": good}
    refused = {"id": "e-refused", "output": "../good.raw", "format": "raw", "digest": good}
    _write(out, ok, mismatch, missing, corrupt)
    p = cli("verify", str(out), "--json", check=EXIT_VERIFY)  # mismatch (6) outranks unreadable (5, 7)
    assert _statuses(p) == {"a-ok": "ok", "b-mismatch": "mismatch", "c-missing": "missing",
                            "d-corrupt": "unreadable"}
    _write(out, missing, corrupt, ok)
    assert _statuses(cli("verify", str(out), "--json", check=EXIT_IO)) == {
        "c-missing": "missing", "d-corrupt": "unreadable", "a-ok": "ok"}
    _write(out, refused, mismatch, missing, ok)
    p = cli("verify", str(out), check=EXIT_FORMAT)  # refused (3) outranks everything
    assert all(name in p.stdout for name in ("a-ok", "b-mismatch", "c-missing", "e-refused"))
    _write(out, ok, {**ok, "id": "f-relative-twin"})
    cli("verify", str(out), check=EXIT_OK)


def test_control_characters_from_the_manifest_never_reach_the_terminal(tmp_path: Path, cli: Any) -> None:
    _write(tmp_path, {"id": "vol-\x1b[31mred\x07", "output": "\x1b]0;title\x07.raw", "format": "raw",
                      "digest": "blkblake3-4m:" + "00" * 32})
    p = cli("verify", str(tmp_path), check=EXIT_IO)
    assert "\x1b" not in p.stdout + p.stderr and "\x07" not in p.stdout + p.stderr
