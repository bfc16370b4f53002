# SPDX-License-Identifier: Apache-2.0
"""The playbook's placement filter on its own: largest first onto the freest target with room, never
over a target's disk or memory, overrides first, an earlier run's placement kept."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

GiB = 1 << 30
PLUGIN = (Path(__file__).resolve().parents[2] / "ansible/collections/ansible_collections/euca2kvm/migrate/plugins"
          / "filter/placement.py")


def plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("euca2kvm_placement", PLUGIN)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cloud(sizes: dict[str, tuple[int, int, str]]) -> dict[str, Any]:
    """An inventory: instance -> (volume GiB, memory MiB, storage controller)."""
    return {"instances": [{"id": i, "vm_type": {"memory_mib": m},
                           "attachments": [{"volume_id": f"vol-{i}", "is_root": True}]}
                          for i, (_, m, _) in sizes.items()]
            + [{"id": "i-instancestore", "vm_type": {"memory_mib": 1}, "attachments": []}],
            "volumes": [{"id": f"vol-{i}", "size_gib": g, "sc_name": sc} for i, (g, _, sc) in sizes.items()]}


def test_largest_first_onto_the_freest_target_with_room() -> None:
    f = plugin().FilterModule().filters()["placement"]
    inv = cloud({"i-a": (50, 1024, "sc1"), "i-b": (30, 1024, "sc2"), "i-c": (20, 4096, "sc1"),
                 "i-d": (500, 512, "sc1"), "i-e": (10, 8192, "sc2")})
    cap = {"t1": {"disk_bytes": 100 * GiB, "memory_mib": 4096}, "t2": {"disk_bytes": 80 * GiB, "memory_mib": 6144}}
    plan = f(inv, cap)
    where = {i: v["host"] for i, v in plan["instances"].items()}
    assert where == {"i-a": "t1", "i-b": "t2", "i-c": "t2"}  # i-a to the freest; then i-b; i-c needs t2's memory
    assert {u["id"] for u in plan["unplaced"]} == {"i-d", "i-e"}  # too large a disk, too much memory
    assert plan["hosts"] == {"t1": {"sc1": ["i-a"]}, "t2": {"sc1": ["i-c"], "sc2": ["i-b"]}}
    assert all(left["disk_bytes"] >= 0 and left["memory_mib"] >= 0 for left in plan["left"].values())
    assert plan["storage_controllers"] == ["sc1", "sc2"] and "i-instancestore" not in plan["instances"]


def test_overrides_first_and_an_earlier_run_kept() -> None:
    f = plugin().placement
    inv = cloud({"i-a": (10, 512, "sc1"), "i-b": (10, 512, "sc1"), "i-c": (10, 512, "sc1")})
    cap = {"t1": {"disk_bytes": 15 * GiB, "memory_mib": 4096}, "t2": {"disk_bytes": 40 * GiB, "memory_mib": 4096}}
    # i-a was exported to t1 by an earlier run: t1's free disk already excludes it, and it stays there
    plan = f(inv, cap, {"i-c": "t1"}, {"t1": ["i-a"]})
    assert {i: (v["host"], v["why"]) for i, v in plan["instances"].items()} == {
        "i-a": ("t1", "already exported there"), "i-b": ("t2", "most free disk with room for it"),
        "i-c": ("t1", "placed by the operator")}
    assert plan["left"]["t1"] == {"disk_bytes": 5 * GiB, "memory_mib": 3072}
    with pytest.raises(ValueError, match="not a target host"):
        f(inv, cap, {"i-a": "t9"})
    with pytest.raises(ValueError, match="i-zz"):
        f(inv, cap, only=["i-a", "i-zz"])
    assert list(f(inv, cap, only=["i-b"])["instances"]) == ["i-b"]
