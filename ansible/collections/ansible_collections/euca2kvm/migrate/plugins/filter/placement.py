# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm.migrate.placement``: which target KVM host exports (and will run) each instance.

Input: the ``euca2kvm inventory`` JSON, the targets' capacity (free disk bytes in the export
directory, memory in MiB for guests), explicit placements, and the instances each target already
holds in its manifest (from an earlier run). Output: per host the instances it exports, grouped by
storage controller, and the reason for every placement.

Order of precedence: an explicit placement (host var or mapping file) wins; then an instance a
target already exported stays there (a re-run resumes where it started, even though the images
now take space); the rest are placed largest disk first on the target with the most free disk
among those with room for its disks and memory (ties: the host name). An instance no target has
room for is listed in ``unplaced`` with the reason, never placed over capacity.

Pure Python on plain data (no Ansible import beyond the plugin class), so it is tested directly.
"""

from __future__ import annotations

from typing import Any

GIB = 1 << 30
# An instance whose volumes the inventory does not size is assumed this large (a Eucalyptus EBS
# volume's default size), so it is never treated as free to place.
DEFAULT_VOLUME_GIB = 1
UNKNOWN_SC = "default"


def _count(value: Any, default: int = DEFAULT_VOLUME_GIB) -> int:
    """A size from the inventory (a non-negative integer, or null when the cloud did not say)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _volume_info(inventory: dict[str, Any]) -> dict[str, tuple[int, str | None]]:
    """volume id -> (size in bytes, storage controller name) from the inventory's volumes and SC rows."""
    out: dict[str, tuple[int, str | None]] = {}
    for v in inventory.get("volumes") or []:
        if isinstance(v, dict) and isinstance(v.get("id"), str):
            gib = _count(v.get("size_gib"))
            out[v["id"]] = (gib * GIB, v.get("sc_name") if isinstance(v.get("sc_name"), str) else None)
    for s in inventory.get("storage_volumes") or []:
        if isinstance(s, dict) and isinstance(s.get("name"), str) and s["name"] not in out:
            gib = _count(s.get("size"))
            out[s["name"]] = (gib * GIB, s.get("sc_name") if isinstance(s.get("sc_name"), str) else None)
    return out


def _needs(inventory: dict[str, Any], only: list[str]) -> dict[str, dict[str, Any]]:
    """instance id -> {disk_bytes, memory_mib, sc, volumes} for every EBS-backed instance (or those in ``only``)."""
    vols = _volume_info(inventory)
    out: dict[str, dict[str, Any]] = {}
    for inst in inventory.get("instances") or []:
        if not isinstance(inst, dict) or not isinstance(inst.get("id"), str):
            continue
        atts = [a for a in inst.get("attachments") or [] if isinstance(a, dict) and isinstance(a.get("volume_id"), str)]
        if not atts or (only and inst["id"] not in only):
            continue
        boot = next((a for a in atts if a.get("is_root")), atts[0])
        vt = inst.get("vm_type")
        mem = _count(vt.get("memory_mib"), 0) if isinstance(vt, dict) else 0
        out[inst["id"]] = {
            "disk_bytes": sum(vols.get(a["volume_id"], (DEFAULT_VOLUME_GIB * GIB, None))[0] for a in atts),
            "memory_mib": mem,
            "sc": vols.get(boot["volume_id"], (0, None))[1] or UNKNOWN_SC,
            "volumes": [a["volume_id"] for a in atts],
        }
    missing = sorted(set(only) - set(out))
    if missing:
        raise ValueError(f"instances not in the inventory (or without EBS volumes): {', '.join(missing)}")
    return out


def placement(inventory: dict[str, Any], capacity: dict[str, dict[str, Any]], overrides: dict[str, str] | None = None,
              existing: dict[str, list[str]] | None = None, only: list[str] | None = None) -> dict[str, Any]:
    """The placement of every instance; see the module's docstring.

    ``capacity``: host -> {"disk_bytes": int, "memory_mib": int}; ``overrides``: instance -> host;
    ``existing``: host -> instance ids already in its manifest; ``only``: restrict to these instances.
    """
    overrides, existing = overrides or {}, existing or {}
    needs = _needs(inventory, list(only or []))
    free = {h: {"disk": int(c.get("disk_bytes", 0)), "mem": int(c.get("memory_mib", 0))} for h, c in capacity.items()}
    for inst, host in overrides.items():
        if host not in free:
            raise ValueError(f"placement of {inst} names {host}, which is not a target host")
    held = {i: h for h in sorted(existing) for i in existing[h] if h in free}
    chosen: dict[str, tuple[str, str]] = {}
    for inst in sorted(needs):
        if inst in overrides:
            chosen[inst] = (overrides[inst], "placed by the operator")
        elif inst in held:
            chosen[inst] = (held[inst], "already exported there")
        else:
            continue
        host = chosen[inst][0]
        free[host]["mem"] -= needs[inst]["memory_mib"]
        if held.get(inst) != host:  # an image already there takes space the free disk no longer counts
            free[host]["disk"] -= needs[inst]["disk_bytes"]
    unplaced = []
    for inst in sorted((i for i in needs if i not in chosen), key=lambda i: (-needs[i]["disk_bytes"], i)):
        n = needs[inst]
        fits = [h for h in sorted(free) if free[h]["disk"] >= n["disk_bytes"] and free[h]["mem"] >= n["memory_mib"]]
        if not fits:
            unplaced.append({"id": inst, "reason": f"needs {n['disk_bytes']} bytes of disk and {n['memory_mib']} MiB "
                             f"of memory; no target has both left"})
            continue
        host = min(fits, key=lambda h: (-free[h]["disk"], h))
        free[host]["disk"] -= n["disk_bytes"]
        free[host]["mem"] -= n["memory_mib"]
        chosen[inst] = (host, "most free disk with room for it")
    hosts: dict[str, dict[str, list[str]]] = {h: {} for h in sorted(free)}
    for inst in sorted(chosen):
        host = chosen[inst][0]
        hosts[host].setdefault(needs[inst]["sc"], []).append(inst)
    return {
        "hosts": hosts,
        "instances": {i: {"host": chosen[i][0], "why": chosen[i][1], **needs[i]} for i in sorted(chosen)},
        "unplaced": unplaced,
        "storage_controllers": sorted({needs[i]["sc"] for i in chosen}),
        "left": {h: {"disk_bytes": f["disk"], "memory_mib": f["mem"]} for h, f in sorted(free.items())},
    }


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"placement": placement}
