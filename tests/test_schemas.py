# SPDX-License-Identifier: Apache-2.0
"""The JSON Schemas of every machine-readable output (src/euca2kvm/schemas, and the manifest's in
export/) against what the commands really print: each command is run in a subprocess on real
containers (tests/security/containers.py, written like lvm2 writes them), its output parsed and
validated with Draft 2020-12, and mutated documents are refused, so the schemas are precise, not
merely permissive. Every schema file is used by a test here."""

from __future__ import annotations

import ast
import gzip
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

import euca2kvm
from _env import missing, need_tools
from cli.test_instance_cli import inst, inventory, unsupported
from euca2kvm.errors import EXIT_FORMAT, EXIT_VERIFY
from security.containers import make

PKG = Path(euca2kvm.__file__).resolve().parent
SCHEMA_DIR = PKG / "schemas"
MANIFEST_SCHEMA = PKG / "export" / "manifest.schema.json"
CLI_TIMEOUT = 120  # seconds; every command here takes one or two
BOOT_TIMEOUT = "20"  # seconds of guest time; SeaBIOS gives up on a blank disk in under one
MiB = 1 << 20


def schema_files() -> dict[str, Path]:
    """name (file name without .schema.json) -> path, the manifest's included."""
    files = {p.name.removesuffix(".schema.json"): p for p in sorted(SCHEMA_DIR.glob("*.schema.json"))}
    return {**files, "manifest": MANIFEST_SCHEMA}


def _registry() -> tuple[dict[str, dict[str, Any]], Registry]:
    docs = {name: json.loads(p.read_text()) for name, p in schema_files().items()}
    reg: Registry = Registry().with_resources((d["$id"], Resource.from_contents(d)) for d in docs.values())
    return docs, reg


DOCS, REGISTRY = _registry()


def errors(name: str, doc: Any) -> list[str]:
    """Each violation (the innermost ones of oneOf/anyOf) as "json/path: message"."""
    out: list[str] = []
    pending = list(Draft202012Validator(DOCS[name], registry=REGISTRY).iter_errors(doc))
    while pending:
        e = pending.pop()
        if e.context:
            pending += e.context
        else:
            out.append(f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}")
    return out


def validate(name: str, doc: Any) -> Any:
    """``doc`` valid against schema ``name``; returns it."""
    bad = errors(name, doc)
    assert not bad, (name, bad[:5])
    return doc


def refused(name: str, doc: Any) -> None:
    assert errors(name, doc), (name, "a mutated document was accepted")


def run(*args: str, check: int | None = 0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "euca2kvm", *args], capture_output=True, text=True,
                       timeout=CLI_TIMEOUT, env=env)
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    if "--json" in args:  # JSON output is plain ASCII: every control or other character escaped
        assert all(c == "\n" or " " <= c <= "~" for c in p.stdout), p.stdout[-2000:]
    return p


def lines(stdout: str) -> list[dict[str, Any]]:
    return [validate("events", json.loads(line)) for line in stdout.splitlines()]


HOSTILE = "evil\x1b]0;pwned\x07\nname"  # a file name that would retitle a terminal; ignored, noted
HOSTILE_TAG = 't\u202e\x1b[2J"q'  # an LV tag with a bidi override, a clear-screen and a quote


def gz(vols: Path) -> Path:
    """The gzip'd snapshot object that goes with ``vols``."""
    return vols.parent / "snap-5c4e0005.gz"


@pytest.fixture(scope="module")
def vols(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An overlay container, one with other VG/LV names, a plain LVM file, a refused raid6 LV, a raw
    snapshot, a gzip'd snapshot object, an interrupted snapshot's temporary file and a hostile name."""
    d = tmp_path_factory.mktemp("schemas") / "volumes"  # its parent holds the gzip object and the inventory
    d.mkdir()
    make(d / "vol-5c4e0001", "euca-ebs-storage-vg-vol-5c4e0001", "euca-vol-5c4e0001", 1,
         tags='"vol-5c4e0001", "' + HOSTILE_TAG.replace('"', '\\"') + '"')
    make(d / "vol-5c4e0002", "data", "x_y", 2, extents=3)
    make(d / "other.img", "data_x", "y", 6)  # no volume id anywhere: kind lvm, id data_x/y
    unsupported(d, "vol-5c4e0004")
    (d / "snap-5c4e0003").write_bytes(random.Random(3).randbytes(MiB))
    # Named on its own, beside the directory (a snap-*.gz inside one is tested in tests/cli/test_cli_defects.py).
    gz(d).write_bytes(gzip.compress(random.Random(5).randbytes(MiB)))
    (d / "vol-5c4e0001Xy12Zq").write_bytes(bytes(4096))
    (d / HOSTILE).write_bytes(b"junk")
    inv = inventory([inst("i-5c4e0001", [("vol-5c4e0001", "/dev/sda"), ("vol-5c4e0002", "/dev/sdb")]),
                     inst("i-5c4e0002", [("vol-5c4e0004", "/dev/sda"), ("vol-5c4e0009", "/dev/sdb")])],
                    volumes_dir=str(d))
    (d.parent / "inventory.json").write_text(json.dumps(inv))
    return d


def test_every_schema_is_valid_and_used() -> None:
    """Each file is a valid 2020-12 schema with a unique $id, and each is validated against by a test
    of this module (no orphan schema)."""
    ids = set()
    for name, doc in DOCS.items():
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema", name
        Draft202012Validator.check_schema(doc)
        ids.add(doc["$id"])
    assert len(ids) == len(DOCS)
    tree = ast.parse(Path(__file__).read_text())
    used = {n.args[0].value for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("validate", "errors")
            and n.args and isinstance(n.args[0], ast.Constant)}
    used.add("events")  # validated by lines()
    assert set(DOCS) <= used, f"schemas no test validates against: {sorted(set(DOCS) - used)}"


# Draft 2020-12 keywords used here; anything else in a schema object is a typo the validator would ignore.
KEYWORDS = {"$schema", "$id", "$ref", "$defs", "title", "description", "type", "enum", "const", "properties",
            "required", "additionalProperties", "items", "minItems", "maxItems", "minimum", "maximum", "minLength",
            "maxLength", "pattern", "propertyNames", "dependentRequired", "oneOf", "anyOf", "allOf", "not", "if",
            "then", "else"}
SCHEMA_MAPS = ("properties", "$defs")  # name -> schema
SCHEMA_LISTS = ("oneOf", "anyOf", "allOf")
SCHEMA_VALUES = ("items", "additionalProperties", "propertyNames", "not", "if", "then", "else")
# Open on purpose: the manifest (newer versions add fields), a mapper's parameters (one set per segment
# type), an event's manifest entry, and the event line's root, which only names the event and leaves
# the rest to closed branches.
OPEN = {"manifest", "inspect:/$defs/volume_report/properties/extent_map/items", "events:", "events:/$defs/entry"}


def subschemas(node: dict[str, Any], where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield where, node
    for k, v in node.items():
        if k in SCHEMA_MAPS:
            for name, sub in v.items():
                yield from subschemas(sub, f"{where}/{k}/{name}")
        elif k in SCHEMA_LISTS:
            for i, sub in enumerate(v):
                yield from subschemas(sub, f"{where}/{k}/{i}")
        elif k in SCHEMA_VALUES and isinstance(v, dict):
            yield from subschemas(v, f"{where}/{k}")


def test_schemas_use_known_keywords_and_close_fixed_objects() -> None:
    """No misspelt keyword, and every object with listed properties allows no others unless open on purpose
    (``if``/``then``/``else`` only add constraints to an object closed around them)."""
    for name, doc in DOCS.items():
        for where, node in subschemas(doc, ""):
            assert set(node) <= KEYWORDS, (name, where, set(node) - KEYWORDS)
            branch = where.rsplit("/", 1)[-1] in ("if", "then", "else")
            if "properties" in node and not branch and name not in OPEN and f"{name}:{where}" not in OPEN:
                assert node.get("additionalProperties") is False, (name, where)


def test_scan_json(vols: Path) -> None:
    doc = validate("scan", json.loads(run("scan", str(vols), str(gz(vols)), "--json").stdout))
    scan = doc["volumes"]
    by_id = {v["id"]: v for v in scan}
    # the notes are in the JSON, raw: the hostile file's name exactly, the interrupted snapshot's temporary file
    noted = {Path(n["path"]).name: n["what"] for n in doc["notes"]}
    assert noted == {HOSTILE: "ignored", "vol-5c4e0001Xy12Zq": "ignored"}, doc["notes"]
    assert {by_id[i]["kind"] for i in by_id} == {"overlay", "lvm", "snapshot", "snapshot-gz"}
    assert by_id["vol-5c4e0004"]["problem"] and by_id["vol-5c4e0001"]["problem"] is None
    assert by_id["vol-5c4e0001"]["tags"] == ["vol-5c4e0001", HOSTILE_TAG]
    assert not any(HOSTILE in f for v in scan for f in v["files"])
    one = validate("scan", json.loads(run("scan", str(vols / "other.img"), "--json").stdout))
    assert [(v["id"], v["kind"]) for v in one["volumes"]] == [("data_x/y", "lvm")] and one["notes"] == []
    refused("scan", {**doc, "volumes": [{**scan[0], "kind": "bogus"}]})
    refused("scan", {**doc, "volumes": [{**scan[0], "unknown": 1}]})
    refused("scan", {**doc, "volumes": [{k: v for k, v in scan[0].items() if k != "problem"}]})
    refused("scan", scan)  # the list of volumes alone is the old shape
    refused("scan", {**doc, "notes": [{**doc["notes"][0], "what": "bogus"}]})


def test_plan_json(vols: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    plan = validate("plan", json.loads(run("plan", "-s", str(vols), "-s", str(gz(vols)), "-o", str(out), "--json",
                                           check=EXIT_FORMAT).stdout))
    assert {b["kind"] for b in plan["blockers"]} == {"unsupported"}
    assert [g["id"] for g in plan["gzip_objects"]] == ["snap-5c4e0005"]
    assert any(HOSTILE in n for n in plan["notes"]) and not out.exists()
    inv = vols.parent / "inventory.json"
    plan = validate("plan", json.loads(run("plan", "--inventory", str(inv), "-o", str(out), "--json",
                                           check=EXIT_FORMAT).stdout))
    assert [i["instance"] for i in plan["instances"]] == ["i-5c4e0001", "i-5c4e0002"]
    assert {b["kind"] for b in plan["blockers"]} == {"unsupported", "missing-file"}
    refused("plan", {**plan, "blockers": [{**plan["blockers"][0], "kind": "whatever"}]})
    refused("plan", {**plan, "blockers": [{**plan["blockers"][0], "forceable": True}]})  # only in-use is
    with open(vols / "vol-5c4e0002", "rb"):  # held open by this process: an in-use blocker --force overrides
        held = validate("plan", json.loads(run("plan", "-s", str(vols), "-o", str(out), "--json", check=None).stdout))
    assert [b["forceable"] for b in held["blockers"] if b["kind"] == "in-use"] == [True]
    hw = plan["instances"][0]["hardware"]
    refused("plan", {**plan, "instances": [{**plan["instances"][0], "hardware": {**hw, "nic_model": "ne2k"}}]})


def test_plan_cutover_json(tmp_path: Path) -> None:
    """plan --cutover over a manifest holding a warm image after two passes and one after a single pass."""
    entry = {"id": "vol-5c4e0009", "output": str(tmp_path / "vol-5c4e0009.raw"), "size": 64 * MiB, "consistent": False,
             "bytes_read": 32 * MiB, "seconds": 0.5, "blocks": {"file": "vol-5c4e0009.raw.blocks", "sha256": "0" * 64},
             "warm": {"passes": 2, "ended_at": "2026-12-01T10:10:00Z"},
             "delta": {"since": "2026-12-01T10:00:00Z", "blocks_changed": 3, "bytes_read": 32 * MiB, "seconds": 0.4}}
    single = {k: v for k, v in entry.items() if k != "delta"} | {"id": "vol-5c4e000a", "output": str(tmp_path / "a")}
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "euca2kvm-manifest", "version": 1,
                                                        "volumes": [entry, single]}))
    doc = validate("cutover", json.loads(run("plan", "--cutover", "-o", str(tmp_path), "--json").stdout))
    assert [r["estimated_seconds"] is None for r in doc["cutover"]] == [False, True]
    refused("cutover", {**doc, "cutover": [{**doc["cutover"][0], "blocks": -1}]})


def garbage(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(64 * 1024))


def test_export_events_and_manifest(vols: Path, tmp_path: Path) -> None:
    need_tools("qemu-img")
    out = tmp_path / "out"
    garbage(out / "vol-5c4e0001.raw")
    events = lines(run("export", "--all", "-s", str(vols), "-s", str(gz(vols)), "-o", str(out), "--json",
                       "--sha256").stdout)
    kinds = [e["event"] for e in events]
    assert kinds.count("start") == kinds.count("done") == 5 and "progress" in kinds
    manifest = validate("manifest", json.loads((out / "manifest.json").read_text()))
    done = {e["id"]: e["entry"] for e in events if e["event"] == "done"}
    assert done == {v["id"]: v for v in manifest["volumes"]}
    again = lines(run("export", "vol-5c4e0001", "-s", str(vols), "-o", str(out), "--json").stdout)
    assert [e["event"] for e in again][-1] == "skipped"
    err = lines(run("export", "vol-5c4e0004", "-s", str(vols), "-o", str(out), "--json", check=EXIT_FORMAT).stdout)
    assert [(e["event"], e["exit_code"]) for e in err] == [("error", EXIT_FORMAT)]
    qout = tmp_path / "qcow2"
    garbage(qout / "vol-5c4e0002.qcow2")
    q = lines(run("export", "vol-5c4e0002", "-s", str(vols), "-o", str(qout), "--format", "qcow2", "--json").stdout)
    assert q[-1]["entry"]["format"] == "qcow2"
    validate("manifest", json.loads((qout / "manifest.json").read_text()))
    start = next(e for e in events if e["event"] == "start")
    refused("events", {**start, "size": -1})
    refused("events", {**start, "event": "started"})
    refused("events", {**start, "extra": True})
    refused("events", {**events[-1], "entry": {**events[-1]["entry"], "format": "iso"}})
    refused("events", {**events[-1], "entry": {**events[-1]["entry"], "kind": "floppy"}})


def test_export_instance_events(vols: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    garbage(out / "i-5c4e0001-sda.raw")
    events = lines(run("export-instance", "i-5c4e0001", "--inventory", str(vols.parent / "inventory.json"),
                       "-o", str(out), "--json").stdout)
    domain = [e for e in events if e["event"] == "domain"]
    assert [d["id"] for d in domain] == ["i-5c4e0001"] and Path(domain[0]["xml"]).is_file()
    assert {e["entry"]["id"] for e in events if e["event"] == "done"} == {"i-5c4e0001-sda", "i-5c4e0001-sdb"}
    assert "warning" in {e["event"] for e in events}
    validate("manifest", json.loads((out / "manifest.json").read_text()))
    refused("events", {**domain[0], "vcpus": 0})


def test_verify_json(vols: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run("export", "vol-5c4e0001", "vol-5c4e0002", "snap-5c4e0003", "-s", str(vols), "-o", str(out))
    ok = validate("verify", json.loads(run("verify", str(out), "--json").stdout))
    assert [r["status"] for r in ok] == ["ok"] * 3
    with open(out / "vol-5c4e0001.raw", "r+b") as f:
        f.seek(MiB + 7)
        b = f.read(1)
        f.seek(MiB + 7)
        f.write(bytes([b[0] ^ 1]))
    (out / "snap-5c4e0003.raw").unlink()
    res = validate("verify", json.loads(run("verify", str(out / "manifest.json"), "--json", check=None).stdout))
    assert sorted(r["status"] for r in res) == ["mismatch", "missing", "ok"]
    unchecked = tmp_path / "unchecked"
    run("export", "vol-5c4e0002", "-s", str(vols), "-o", str(unchecked), "--no-verify")
    res = validate("verify", json.loads(run("verify", str(unchecked), "--json", check=EXIT_VERIFY).stdout))
    assert [(r["status"], r["exit_code"]) for r in res] == [("unverifiable", EXIT_VERIFY)]
    refused("verify", [{**ok[0], "exit_code": 6}])  # ok means exit 0
    refused("verify", [{**ok[0], "status": "fine"}])


def gpt_disk(tmp_path: Path) -> Path:
    """A GPT disk with one ext4 partition, made by sfdisk and mkfs.ext4."""
    need_tools("sfdisk", "mkfs.ext4")
    from tests.kvm import guestimg

    disk = guestimg.sparse(tmp_path / "gpt.raw", 16 * MiB)
    guestimg.sfdisk(disk, "label: gpt\nstart=2048, size=20480, type=L, name=root\n")
    guestimg.place(disk, 2048 * 512, guestimg.mkfs(tmp_path / "root.ext4", 10 * MiB, "mkfs.ext4", "-q", "-L", "root"))
    return disk


def test_inspect_json(vols: Path, tmp_path: Path) -> None:
    full = validate("inspect", json.loads(run("inspect", "vol-5c4e0001", "-s", str(vols), "--json").stdout))
    assert {"vg", "pvs", "lv", "extent_map", "extents", "guest"} <= set(full)
    assert full["lv"]["tags"] == ["vol-5c4e0001", HOSTILE_TAG]
    bare = validate("inspect", json.loads(run("inspect", "vol-5c4e0002", "-s", str(vols), "--json", "--no-guest",
                                              "--extents", "1").stdout))
    assert "guest" not in bare and len(bare["extents"]) == 1
    bad = validate("inspect", json.loads(run("inspect", "vol-5c4e0004", "-s", str(vols), "--json").stdout))
    assert bad["volume"]["problem"] and "extent_map" not in bad
    image = validate("inspect", json.loads(run("inspect", str(gpt_disk(tmp_path)), "--json").stdout))
    table = image["guest"]["table"]
    assert table["kind"] == "gpt" and image["guest"]["partitions"][0]["content"]["type"] == "ext4"
    refused("inspect", {**image, "guest": {**image["guest"], "bootable": "maybe"}})
    refused("inspect", {**full, "extents": [{"start": 0, "length": 1, "kind": "zero", "path": "/x", "offset": 0}]})


def test_boot_test_json(tmp_path: Path) -> None:
    need_tools("qemu-system-x86_64")
    blank = tmp_path / "blank.raw"
    with open(blank, "wb") as f:
        f.truncate(8 * MiB)
    work = tmp_path / "work"
    env = {**os.environ, "EUCA2KVM_ACCEL": "tcg"}
    r = validate("boot-test", json.loads(run("boot-test", str(blank), "--format", "raw", "--timeout", BOOT_TIMEOUT,
                                             "--workdir", str(work), "--json", check=EXIT_VERIFY, env=env).stdout))
    assert r["ok"] is False and r["accel"] == "tcg" and r["stage"] in ("none", "firmware")
    refused("boot-test", {**r, "stage": "userspace"})
    refused("boot-test", {**r, "milestones": {"bios": 0.1}})


@pytest.fixture(scope="module")
def moto_ec2() -> Iterator[tuple[str, dict[str, str]]]:
    """(endpoint, seeded ids) of the EC2 API server of tests/eucalyptus/test_inventory_api.py."""
    try:
        import boto3  # noqa: F401
        from moto.server import ThreadedMotoServer  # noqa: F401
    except ImportError:
        missing("moto[server] and boto3 not installed")
    from eucalyptus import test_inventory_api as api

    gen = api.moto_endpoint.__wrapped__()  # type: ignore[attr-defined]
    endpoint = next(gen)
    try:
        yield endpoint, api.seeded.__wrapped__(endpoint)  # type: ignore[attr-defined]
    finally:
        next(gen, None)


def test_inventory_json(moto_ec2: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    from eucalyptus.test_inventory_api import CREDS

    endpoint, ids = moto_ec2
    saved = tmp_path / "inventory.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EC2_", "EUCA_"))}
    inv = validate("inventory", json.loads(run(
        "inventory", "--api", endpoint, "-I", CREDS.access_key, "-S", CREDS.secret_key, "--region", CREDS.region,
        "--json", "-o", str(saved), env=env).stdout))
    assert {i["id"] for i in inv["instances"]} >= {ids["a"], ids["b"]}
    assert validate("inventory", json.loads(saved.read_text())) == inv
    refused("inventory", {**inv, "instances": [{**inv["instances"][0], "mac": "not a mac"}]})
    refused("inventory", {**inv, "format": "something-else"})
