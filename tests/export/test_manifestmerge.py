# SPDX-License-Identifier: Apache-2.0
"""manifest merge: two hosts' export directories as one manifest that verify and report read; remote
entries are never read here, conflicts write nothing, hostile merged entries are confined."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from _env import need_root, need_tools
from clirun import euca2kvm
from euca2kvm.errors import EXIT_FORMAT, EXIT_USAGE, EXIT_VERIFY
from euca2kvm.export import manifestcheck

MiB = 1 << 20
VOLS = ("vol-3e700001", "vol-3e700002", "vol-3e700003")


cli = euca2kvm


def container(d: Path, vid: str, seed: int) -> None:
    """An overlay container made by the real lvm2 with 1 MiB of seeded random data in its LV."""
    import lvmfix

    lvmfix.seeded_overlay(d, vid, seed)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two hosts' export directories: a holds the first two volumes, b the third."""
    need_root()
    need_tools("lvm", "losetup")
    root = tmp_path_factory.mktemp("merge")
    vols = root / "volumes"
    vols.mkdir()
    for i, vid in enumerate(VOLS):
        container(vols, vid, i)
    a, b = root / "host-a" / "export", root / "host-b" / "export"
    cli("export", VOLS[0], VOLS[1], "-s", str(vols), "-o", str(a))
    cli("export", VOLS[2], "-s", str(vols), "-o", str(b))
    cli("manifest", "merge", str(a / "manifest.json"), "--host", "a", "-o", str(a / "host.json"))
    cli("manifest", "merge", str(b), "--host", "b", "-o", str(b / "host.json"))
    return {"root": root, "vols": vols, "a": a, "b": b}


def schema(name: str) -> dict[str, Any]:
    text = resources.files("euca2kvm").joinpath(name).read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def test_two_hosts_merge_verify_and_report(hosts: dict[str, Path], tmp_path: Path) -> None:
    merged = tmp_path / "merged.json"
    merged.write_bytes(b"garbage \0 from before")
    p = cli("manifest", "merge", str(hosts["a"] / "host.json"), str(hosts["b"] / "host.json"), "-o", str(merged),
            "--json")
    summary = json.loads(p.stdout)
    assert summary["volumes"] == 3 and summary["hosts"] == ["a", "b"] and summary["manifests"] == 2
    assert summary["duplicates"] == [] and summary["conflicts"] == []
    doc = json.loads(merged.read_text())
    jsonschema.validate(doc, manifestcheck.schema())
    where = {e["id"]: (e["host"], e["export_dir"]) for e in doc["volumes"]}
    assert where == {VOLS[0]: ("a", str(hosts["a"])), VOLS[1]: ("a", str(hosts["a"])),
                     VOLS[2]: ("b", str(hosts["b"]))}
    originals = {e["id"]: e["digest"] for d in ("a", "b")
                 for e in json.loads((hosts[d] / "manifest.json").read_text())["volumes"]}
    assert {e["id"]: e["digest"] for e in doc["volumes"]} == originals
    # merging again (the merged file with one of its inputs) changes nothing: idempotent
    again = tmp_path / "again.json"
    cli("manifest", "merge", str(merged), str(hosts["b"] / "host.json"), "-o", str(again))
    assert json.loads(again.read_text())["volumes"] == doc["volumes"]
    v = cli("verify", str(merged), "--json")
    results = json.loads(v.stdout)
    jsonschema.validate(results, schema("schemas/verify.schema.json"))
    assert sorted(r["status"] for r in results) == ["ok"] * 3
    report = tmp_path / "report.md"
    cli("report", str(merged), "-o", str(report), "--format", "md")
    text = report.read_text()
    assert all(vid in text for vid in VOLS)


def test_entries_of_another_host_are_remote_not_read(hosts: dict[str, Path], tmp_path: Path) -> None:
    merged = tmp_path / "merged.json"
    cli("manifest", "merge", str(hosts["a"] / "host.json"), str(hosts["b"] / "host.json"), "-o", str(merged))
    elsewhere = tmp_path / "fetched-b"
    shutil.copytree(hosts["b"], elsewhere)  # host b's directory is gone from here: only its copy remains
    shutil.rmtree(hosts["b"])
    try:
        v = cli("verify", str(merged), "--json", check=EXIT_VERIFY)
        status = {r["id"]: r["status"] for r in json.loads(v.stdout)}
        assert status == {VOLS[0]: "ok", VOLS[1]: "ok", VOLS[2]: "remote"}
        r = cli("report", str(merged), "-o", str(tmp_path / "r.html"))
        assert "3 exported" in r.stderr.replace("instance(s)/volume(s), ", "")
    finally:
        shutil.copytree(elsewhere, hosts["b"])


def test_conflicting_digests_write_nothing(hosts: dict[str, Path], tmp_path: Path) -> None:
    vols = tmp_path / "volumes"
    vols.mkdir()
    container(vols, VOLS[0], 99)  # the same volume id with other content, exported on host c
    c = tmp_path / "host-c"
    cli("export", VOLS[0], "-s", str(vols), "-o", str(c))
    merged = tmp_path / "merged.json"
    merged.write_text("victim")
    p = cli("manifest", "merge", str(hosts["a"] / "host.json"), str(c), "--host", "c", "-o", str(merged),
            "--json", check=EXIT_VERIFY)
    conflicts = json.loads(p.stdout)["conflicts"]
    assert [(x["id"], x["fields"]) for x in conflicts] == [(VOLS[0], ["digest"])]
    assert merged.read_text() == "victim"
    same = tmp_path / "host-d"  # the same content exported twice is a duplicate, both kept
    cli("export", VOLS[0], "-s", str(hosts["vols"]), "-o", str(same))
    p = cli("manifest", "merge", str(hosts["a"] / "host.json"), str(same), "--host", "d", "-o", str(merged),
            "--json")
    assert [x["id"] for x in json.loads(p.stdout)["duplicates"]] == [VOLS[0]]
    assert len(json.loads(merged.read_text())["volumes"]) == 3


def test_hostile_merged_entries_are_confined(hosts: dict[str, Path], tmp_path: Path) -> None:
    doc = json.loads((hosts["a"] / "host.json").read_text())
    entry = doc["volumes"][0]
    # an entry pointing at a directory with no manifest of its own listing it: never read, reported remote
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret").write_bytes(b"x" * 4096)
    stolen = tmp_path / "stolen.json"
    stolen.write_text(json.dumps({**doc, "volumes": [{**entry, "export_dir": str(victim),
                                                      "output": str(victim / "secret")}]}))
    v = cli("verify", str(stolen), "--json", check=EXIT_VERIFY)
    assert [r["status"] for r in json.loads(v.stdout)] == ["remote"]
    # an output leaving its export directory is refused by merge, naming the file
    escape = tmp_path / "escape.json"
    escape.write_text(json.dumps({**doc, "volumes": [{**entry, "output": "../../etc/passwd"}]}))
    p = cli("manifest", "merge", str(escape), "-o", str(tmp_path / "m.json"), check=EXIT_FORMAT)
    assert str(escape) in p.stderr and not (tmp_path / "m.json").exists()
    # a merged manifest never replaces an export directory's manifest.json
    before = (hosts["a"] / "manifest.json").read_bytes()
    cli("manifest", "merge", str(hosts["b"] / "host.json"), "-o", str(hosts["a"] / "manifest.json"),
        check=EXIT_USAGE)
    assert (hosts["a"] / "manifest.json").read_bytes() == before
    # a host label with a control character is a usage error
    cli("manifest", "merge", str(hosts["a"]), "--host", "a\x1bb", "-o", str(tmp_path / "n.json"), check=EXIT_USAGE)
