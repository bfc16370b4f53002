# SPDX-License-Identifier: Apache-2.0
"""Manifests (and optional ``plan --json`` files) turned into the rows of a migration report.

Everything here is read from files anyone with write access to an export directory may have
edited: manifests go through :func:`manifest.load` (bounded, schema-checked), every file an entry
names is resolved by :func:`manifestcheck.entry_path` (confined to the manifest's directory, no
symbolic link followed), reads are bounded, and a screenshot is embedded only when it is a PNG.
Values are kept as data; escaping is the templates' job (autoescape, control characters escaped).

Boot-test results come from the entry's ``boot_test`` (recorded by ``export --boot-test``); a
standalone ``boot-test`` records nothing in the manifest, so its ``IMAGE.boot.png``/``.boot.log``
beside the image are shown instead, with the stage inferred from the log and a note saying so.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EXIT_FORMAT, EXIT_IN_USE, EXIT_IO, EXIT_USAGE, EXIT_VERIFY, Euca2kvmError, FormatError, UsageError
from ..export import manifest, manifestcheck, manifestmerge
from ..kvm.boottest import STAGE_PATTERNS, Stage
from ..safefs import read_bounded

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A VGA screendump is a few hundred KiB; a larger "screenshot" is not embedded (the page stays small).
MAX_SCREENSHOT = 4 << 20
# The console excerpt: the tail of the boot log, bounded in bytes before decoding and in lines.
MAX_LOG_BYTES = 1 << 20
CONSOLE_LINES = 25
CONSOLE_LINE_CHARS = 200
# A plan --json file is a few KiB per instance.
MAX_PLAN_BYTES = 16 << 20
# The exit code of a plan blocker by its kind (planning.instances.classify and plan_cmd), as the
# export it blocks would exit; another kind counts as an I/O failure.
BLOCKER_CODES = {"in-use": EXIT_IN_USE, "format": EXIT_FORMAT, "unsupported": EXIT_FORMAT, "missing-pv": EXIT_FORMAT,
                 "missing-file": EXIT_IO, "no-space": EXIT_IO, "name-collision": EXIT_USAGE}


@dataclass
class Disk:
    id: str
    device: str | None
    output: str
    format: str
    size: int | None
    allocated: int | None
    digest: str | None
    sha256: str | None
    verified: bool
    present: bool
    seconds: float | None
    exported_at: str | None
    problems: list[str] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)  # the exit code of each problem (errors.py)
    boot: dict[str, Any] | None = None  # stage, ok, reason, accel, elapsed, milestones, recorded
    screenshot: str | None = None  # data: URI of a checked PNG
    console: list[str] = field(default_factory=list)


@dataclass
class Instance:
    """One instance (``export-instance``) or one volume exported on its own."""

    id: str
    kind: str  # "instance" | "volume"
    manifest: str
    disks: list[Disk] = field(default_factory=list)
    vm_type: str | None = None
    hardware: list[tuple[str, str]] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        """The export directory's name, telling apart one volume exported into two directories."""
        return Path(self.manifest).parent.name if self.manifest else ""

    @property
    def exported(self) -> bool:
        return bool(self.disks) and all(d.present for d in self.disks)

    @property
    def verified(self) -> bool:
        return self.exported and all(d.verified for d in self.disks)

    @property
    def boot(self) -> dict[str, Any] | None:
        """The boot disk's boot test (the first disk that has one)."""
        return next((d.boot for d in self.disks if d.boot is not None), None)

    @property
    def booted(self) -> bool:
        b = self.boot
        return bool(b and b.get("ok") is True)

    @property
    def failed(self) -> bool:
        b = self.boot
        return (not self.exported or any(d.problems for d in self.disks) or bool(self.blockers)
                or bool(b and b.get("ok") is False))

    def exit_codes(self) -> set[int]:
        """The exit code of each reason this instance failed (empty when it did not): a refused image 3,
        a failed boot test 6 (as ``export --boot-test``), a missing image or screenshot or an instance
        never exported 5, a plan blocker the code of its kind."""
        codes = {c for d in self.disks for c in d.codes}
        b = self.boot
        if b and b.get("ok") is False:
            codes.add(EXIT_VERIFY)
        if not self.exported:
            codes.add(EXIT_IO)
        codes |= {BLOCKER_CODES.get(b.split(":", 1)[0], EXIT_IO) for b in self.blockers}
        return codes

    @property
    def status(self) -> str:
        if self.failed:
            return "failed"
        if self.booted:
            return "booted"
        return "verified" if self.verified else "exported"

    @property
    def size(self) -> int:
        return sum(d.size or 0 for d in self.disks)


@dataclass
class Report:
    instances: list[Instance]
    manifests: list[str]
    notes: list[str] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        i = self.instances
        return {"total": len(i), "exported": sum(x.exported for x in i), "verified": sum(x.verified for x in i),
                "booted": sum(x.booted for x in i), "failed": sum(x.failed for x in i)}


def manifest_dir(arg: str) -> Path:
    """The manifest file of a MANIFEST argument (``manifest.json``, a merged ``*.json`` or the directory)."""
    path = Path(arg)
    if path.is_dir():
        path = path / manifest.MANIFEST
    if not path.name.endswith(".json"):
        raise UsageError(f"{arg}: not a manifest (a {manifest.MANIFEST}, a merged .json or the directory holding one)")
    if not path.parent.is_dir() or not (path.exists() or path.is_symlink()):
        raise UsageError(f"{path} does not exist")
    return path


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _beside(outdir: Path, output: str, suffix: str) -> Path | None:
    """``OUTPUT<suffix>`` in the export directory, confined; None when absent or refused."""
    try:
        return manifestcheck.entry_path(outdir, output + suffix)
    except (FileNotFoundError, FormatError):
        return None


def screenshot_uri(path: Path) -> str | None:
    """A data: URI of the PNG at ``path``, or None if it is larger than MAX_SCREENSHOT or not a PNG."""
    try:
        data = read_bounded(path, MAX_SCREENSHOT)
    except Euca2kvmError:
        return None
    if not data.startswith(PNG_SIGNATURE):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def console_tail(path: Path) -> list[str]:
    """The last lines of a boot log, bounded: only its last MAX_LOG_BYTES are read."""
    try:
        with open(path, "rb", opener=_nofollow) as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - MAX_LOG_BYTES))
            raw = f.read(MAX_LOG_BYTES)
    except OSError:
        return []
    return _tail_lines(raw.decode("utf-8", "replace"))


def _tail_lines(text: str) -> list[str]:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [ln.rstrip() for ln in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return [ln[:CONSOLE_LINE_CHARS] for ln in lines[-CONSOLE_LINES:]]


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)


def _boot(entry: dict[str, Any], outdir: Path, disk: Disk) -> None:
    output = entry["output"]
    png, log = _beside(outdir, output, ".boot.png"), _beside(outdir, output, ".boot.log")
    if png is not None:
        disk.screenshot = screenshot_uri(png)
    if log is not None:
        disk.console = console_tail(log)
    bt = entry.get("boot_test")
    if isinstance(bt, dict):
        ms = bt.get("milestones")
        milestones = sorted(((str(k), t) for k, v in ms.items() if (t := _num(v)) is not None),
                            key=lambda kv: kv[1]) if isinstance(ms, dict) else []
        disk.boot = {"recorded": True, "ok": bt["ok"] if isinstance(bt.get("ok"), bool) else None,
                     "stage": _str(bt.get("stage")), "reason": _str(bt.get("reason")),
                     "accel": _str(bt.get("accel")), "elapsed": _num(bt.get("elapsed")), "milestones": milestones}
        vga = bt.get("vga_text")
        if not disk.console and isinstance(vga, str):  # no serial output: the screen's text instead
            disk.console = _tail_lines(vga[-MAX_LOG_BYTES:])
        if bt.get("screenshot") and disk.screenshot is None:
            disk.problems.append("boot screenshot recorded but missing or not a PNG")
            disk.codes.append(EXIT_IO)
    elif png is not None or log is not None:
        text = "\n".join(disk.console)
        stage = max((s for s, p in STAGE_PATTERNS.items() if p.search(text)), default=Stage.NONE)
        disk.boot = {"recorded": False, "ok": None, "stage": stage.name.lower(),
                     "reason": "not recorded in the manifest: stage inferred from the boot log beside the image",
                     "accel": None, "elapsed": None, "milestones": []}


def _disk(entry: dict[str, Any], outdir: Path | None) -> Disk:
    """One disk; ``outdir`` None: a merged entry on another host, shown as its manifest records it."""
    output = entry["output"]
    present, problems, codes = True, [], []
    try:
        if outdir is not None:
            manifestcheck.entry_path(outdir, output)
    except FileNotFoundError:
        present = False
        problems.append("image missing")
        codes.append(EXIT_IO)
    except FormatError as e:
        present = False
        problems.append(f"image refused: {e}")
        codes.append(EXIT_FORMAT)
    d = Disk(id=entry["id"], device=_str(entry.get("device")) or _str(entry.get("target_dev")),
             output=Path(output).name, format=_str(entry.get("format")) or "raw", size=_int(entry.get("size")),
             allocated=_int(entry.get("allocated_bytes")), digest=_str(entry.get("digest")),
             sha256=_str(entry.get("sha256")), verified=entry.get("verified") is True, present=present,
             seconds=_num(entry.get("seconds")), exported_at=_str(entry.get("exported_at")), problems=problems,
             codes=codes)
    if outdir is not None:
        _boot(entry, outdir, d)
    return d


def _domain_hardware(outdir: Path, entry: dict[str, Any]) -> list[tuple[str, str]]:
    """vCPUs and memory from the instance's domain XML (confined, parsed by the hardened reader)."""
    from ..kvm.domainxml import parse_domain

    dom = _str(entry.get("domain"))
    if dom is None:
        return []
    try:
        spec = parse_domain(manifestcheck.entry_path(outdir, dom))
    except (FileNotFoundError, Euca2kvmError):
        return []
    return [("vCPUs", str(spec.vcpus)), ("memory", f"{spec.memory_mib} MiB"), ("domain", Path(dom).name)]


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]], depth: int = 0) -> None:
    if isinstance(value, dict) and depth < 3:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out, depth + 1)
    elif isinstance(value, list) and depth < 3 and all(not isinstance(v, dict | list) for v in value):
        out.append((prefix, ", ".join(str(v) for v in value)))
    elif value is not None and value != [] and value != {}:
        out.append((prefix, value if isinstance(value, str) else json.dumps(value)))


def read_plan(path: Path) -> dict[str, Any]:
    """A ``plan --json`` document: bounded, no symlink, nesting-checked, an object."""
    raw = read_bounded(path, MAX_PLAN_BYTES)
    if not manifestcheck.nesting_ok(raw):
        raise FormatError(f"plan nested deeper than {manifestcheck.MAX_DEPTH} levels", str(path))
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise FormatError(f"not valid JSON: {manifestcheck.shown(str(e))}", str(path)) from None
    if not isinstance(data, dict):
        raise FormatError("not a plan --json document (not an object)", str(path))
    return data


def _blockers(items: Any) -> list[str]:
    if not isinstance(items, list):
        return []
    return [f"{b.get('kind', '?')}: {b.get('message', '')}" if isinstance(b, dict) else str(b) for b in items]


def build(manifest_args: list[str], plan_paths: list[Path] | None = None) -> Report:
    """The report of every entry of the given manifests, grouped by instance, plus the plans' facts."""
    files = list(dict.fromkeys(manifest_dir(a).resolve() for a in manifest_args))
    instances: dict[tuple[str, str], Instance] = {}
    seen: dict[str, frozenset[str] | None] = {}
    for mfile in files:
        data = manifest.load(mfile.parent, mfile.name)
        for entry in data["volumes"]:
            try:  # a merged manifest's entry lives in its export directory, maybe on another host
                outdir: Path | None = manifestmerge.image_dir(mfile.parent, entry, seen)
            except manifestmerge.RemoteImage:
                outdir = None
            edir = _str(entry.get(manifestmerge.EXPORT_DIR))
            where = Path(edir) / manifest.MANIFEST if edir else mfile
            inst = _str(entry.get("instance"))
            key = (str(where), inst or "\0" + entry["id"] + "\0" + entry["output"])
            item = instances.get(key)
            if item is None:
                item = instances[key] = Instance(id=inst or entry["id"], kind="instance" if inst else "volume",
                                                 manifest=str(where))
                if inst and outdir is not None:
                    item.hardware = _domain_hardware(outdir, entry)
            item.disks.append(_disk(entry, outdir))
    rep = Report(instances=sorted(instances.values(), key=lambda i: (i.kind, i.id)),
                 manifests=[str(f) for f in files])
    by_id = {i.id: i for i in rep.instances}
    for p in plan_paths or []:
        plan = read_plan(p)
        rep.blockers += _blockers(plan.get("host_blockers"))
        rep.notes += [str(n) for n in plan.get("notes", []) if isinstance(n, str | int | float)]
        for pi in plan.get("instances", []) if isinstance(plan.get("instances"), list) else []:
            if not isinstance(pi, dict) or not isinstance(pi.get("instance"), str):
                continue
            item = by_id.get(pi["instance"])
            if item is None:  # planned but not in any manifest: not exported
                item = Instance(id=pi["instance"], kind="instance", manifest="")
                rep.instances.append(item)
                by_id[item.id] = item
            item.vm_type = _str(pi.get("vm_type"))
            hw: list[tuple[str, str]] = []
            if _int(pi.get("vcpus")) is not None:
                hw.append(("vCPUs", str(pi["vcpus"])))
            if _int(pi.get("memory_mib")) is not None:
                hw.append(("memory", f"{pi['memory_mib']} MiB"))
            for k in ("root_device", "boot_verdict"):
                _flatten(k.replace("_", " "), pi.get(k), hw)
            _flatten("", pi.get("hardware"), hw)
            item.hardware = hw or item.hardware
            item.blockers += _blockers(pi.get("blockers"))
            item.notes += [str(w) for w in pi.get("warnings", []) if isinstance(w, str)] \
                if isinstance(pi.get("warnings"), list) else []
        for pv in plan.get("volumes", []) if isinstance(plan.get("volumes"), list) else []:
            if isinstance(pv, dict) and isinstance(pv.get("volume_id"), str) and pv["volume_id"] in by_id:
                by_id[pv["volume_id"]].blockers += _blockers(pv.get("blockers"))
    return rep
