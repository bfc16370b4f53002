# SPDX-License-Identifier: Apache-2.0
"""``euca2kvm report``: a real manifest set (the demo volumes exported by the CLI, one boot-tested
for real in QEMU) renders as a page headless Chromium loads with every row and image and no
console error, sorts, loads nothing from the network; hostile manifests render escaped; Markdown;
exit codes."""

from __future__ import annotations

import html
import html.parser
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from _env import need_tools
from clirun import euca2kvm
from euca2kvm.errors import EXIT_FORMAT, EXIT_IO, EXIT_USAGE, EXIT_VERIFY
from euca2kvm.report.render import CSP

DEMO = Path(__file__).resolve().parent.parent.parent / "demo" / "volumes.tar.xz"
CHROMIUM_TIMEOUT_S = 60  # a page load takes about 2 s; a hung browser fails the test instead of the suite
BOOT_TIMEOUT_S = "4"  # SeaBIOS reports "no bootable device" within a second under TCG
PNG = b"\x89PNG\r\n\x1a\n"
# What Chromium logs for a console message, an uncaught exception or a CSP violation.
CONSOLE_ERROR = re.compile(r"Uncaught|CONSOLE|Refused to|Content Security Policy")


cli = euca2kvm


def png(width: int, height: int) -> bytes:
    """A real PNG (gray bars), as a screendump would be."""
    rows = b"".join(b"\0" + b"".join(bytes((40 + (x // 8) % 2 * 150,) * 3) for x in range(width))
                    for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (PNG + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def edit_manifest(outdir: Path, change: Any) -> None:
    path = outdir / "manifest.json"
    data = json.loads(path.read_text())
    for entry in data["volumes"]:
        change(entry)
    path.write_text(json.dumps(data, indent=2))


@pytest.fixture(scope="module")
def migration(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two export directories and a plan, as a night of migration leaves them.

    ``one``: the three demo volumes exported as qcow2 with --libvirt; vol-0de0a001 is then marked as
    instance i-0de0c001's boot disk (with its domain XML) and given the boot-test record, screenshot
    and log a successful ``export --boot-test`` writes. ``two``: vol-0de0a002 exported with a real
    ``--boot-test`` in QEMU, which fails (no boot loader on the demo disk, exit 6) and records it.
    ``plan.json``: a plan naming i-0de0c001's VM type and a second instance blocked by a missing file.
    """
    need_tools("qemu-img", "qemu-system-x86_64")
    root = tmp_path_factory.mktemp("report")
    with tarfile.open(DEMO) as t:
        t.extractall(root / "volumes", filter="data")
    vols = str(root / "volumes")
    one, two = root / "one", root / "two"
    cli("export", "--all", "-s", vols, "-o", str(one), "--format", "qcow2", "--libvirt")
    cli("export", "vol-0de0a002", "-s", vols, "-o", str(two), "--libvirt", "--boot-test", "--boot-timeout",
        BOOT_TIMEOUT_S, check=EXIT_VERIFY, env={"EUCA2KVM_ACCEL": "tcg"})
    image = one / "vol-0de0a001.qcow2"
    (one / "vol-0de0a001.qcow2.boot.png").write_bytes(png(360, 200))
    (one / "vol-0de0a001.qcow2.boot.log").write_text("SeaBIOS\nBooting from Hard Disk...\nLinux version 6.1.0\n"
                                                       "demo login: \n")

    def as_instance(e: dict[str, Any]) -> None:
        if e["id"] == "vol-0de0a001":
            e.update(instance="i-0de0c001", device="/dev/sda", domain=str(one / "vol-0de0a001.xml"), boot_test={
                "ok": True, "stage": "login", "reason": "login prompt", "accel": "tcg", "elapsed": 11.5,
                "milestones": {"firmware": 0.4, "bootloader": 1.1, "kernel": 2.0, "login": 11.5},
                "screenshot": str(image) + ".boot.png", "failure": None, "vga_text": ""})

    edit_manifest(one, as_instance)
    plan = root / "plan.json"
    plan.write_text(json.dumps({
        "notes": ["vol-0de0a002Qx7bZk is the temporary file of an interrupted snapshot"],
        "host_blockers": [],
        "instances": [
            {"instance": "i-0de0c001", "vm_type": "m1.small", "vcpus": 1, "memory_mib": 512, "blockers": [],
             "warnings": ["instance was running when inventoried"], "hardware": {"nic_model": "virtio"}},
            {"instance": "i-0de0c002", "vm_type": "m1.large", "vcpus": 2, "memory_mib": 2048, "warnings": [],
             "blockers": [{"kind": "missing-file", "message": "vol-0de0a009 has no container file"}]}]}))
    return {"one": one, "two": two, "plan": plan, "root": root}


def chromium(page: Path, work: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``page`` with a private profile, no network services, logging to stderr."""
    need_tools("chromium")
    return subprocess.run(
        ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions", f"--user-data-dir={work / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--window-size=1280,2000", *mode, page.as_uri()],
        capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=True)


class _Dom(html.parser.HTMLParser):
    """Summary rows (their first cell), images (their src) and script elements of a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[str] = []
        self.images: list[str] = []
        self.scripts = 0
        self.attrs: dict[str, dict[str, str | None]] = {}
        self._in_summary = self._first_cell = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.attrs[str(a["id"])] = a
        if tag == "table":
            self._in_summary = a.get("id") == "summary"
        elif tag == "tr" and self._in_summary:
            self._first_cell = True
        elif tag == "td" and self._in_summary and self._first_cell:
            self._cell, self._first_cell = [], False
        elif tag == "img":
            self.images.append(a.get("src") or "")
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._in_summary = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def dom(page: Path, work: Path) -> tuple[_Dom, str]:
    """The page's DOM after its scripts ran, parsed, and Chromium's log."""
    p = chromium(page, work, "--dump-dom")
    d = _Dom()
    d.feed(p.stdout)
    return d, p.stderr


def test_html_report_renders_in_chromium(migration: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    out.write_bytes(os.urandom(4096))  # garbage where the report goes: replaced whole
    cli("report", str(migration["one"]), str(migration["two"] / "manifest.json"), "--plan", str(migration["plan"]),
        "-o", str(out), check=EXIT_VERIFY)  # a failed boot test: written, and the exit status says so
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>")
    # self-contained: nothing but data: URIs and in-page anchors referenced
    refs = re.findall(r"""\b(?:src|href|action|srcset|url)\s*[=(]\s*["']?([^"')\s>]*)""", text)
    assert refs and all(r.startswith(("data:image/png;base64,", "#inst-")) for r in refs), refs
    assert f'http-equiv="Content-Security-Policy" content="{CSP}"' in html.unescape(text)

    shot = tmp_path / "report.png"
    p = chromium(out, tmp_path, f"--screenshot={shot}")
    assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 20_000  # a rendered page, not a blank
    assert not CONSOLE_ERROR.search(p.stderr), p.stderr[-3000:]
    shutil.copy(shot, migration["root"] / "report.png")  # kept for a look at it

    d, log = dom(out, tmp_path)
    assert not CONSOLE_ERROR.search(log), log[-3000:]
    # one row per instance or volume: i-0de0c001 (exported), i-0de0c002 (planned, not exported), the
    # snapshot and vol-0de0a002 of "one", vol-0de0a002 of "two" (its failed boot)
    assert sorted(d.rows) == ["i-0de0c001", "i-0de0c002", "snap-0de0b001", "vol-0de0a002", "vol-0de0a002"]
    # the two screenshots (one written as export --boot-test does, one from the real QEMU boot), embedded
    assert len(d.images) == 2 and all(s.startswith("data:image/png;base64,") for s in d.images)
    assert d.scripts == 1
    counts = re.findall(r'<div class="card[^"]*"><b>(\d+)</b><span>([a-z /]+)</span>', text)
    assert dict((k, int(v)) for v, k in counts) == {"instances / volumes": 5, "exported": 4, "verified": 4,
                                                      "booted": 1, "failed": 2}


def test_summary_table_sorts(migration: dict[str, Any], tmp_path: Path) -> None:
    """Clicking the Size header (the sixth) orders the rows by size, numerically; clicking again reverses them."""
    out = tmp_path / "report.html"
    cli("report", str(migration["one"]), "-o", str(out))
    probe = ('<script>var h = document.querySelectorAll("#summary th")[5];'
             'function order() { return Array.prototype.map.call(document.querySelectorAll("#summary tbody tr"),'
             ' function (r) { return r.cells[5].dataset.sort; }).join(","); }'
             'h.click(); document.body.setAttribute("data-asc", order());'
             'h.click(); document.body.setAttribute("data-desc", order());</script></body>')
    page = tmp_path / "probe.html"
    page.write_text(out.read_text().replace("</body>", probe))
    # the probe is inline: the page's own CSP allows it, as it allows the sorting script
    p = chromium(page, tmp_path, "--dump-dom")
    assert not CONSOLE_ERROR.search(p.stderr), p.stderr[-3000:]
    asc = [int(x) for x in re.search(r'data-asc="([0-9,]+)"', p.stdout).group(1).split(",")]  # type: ignore[union-attr]
    desc = [int(x) for x in re.search(r'data-desc="([0-9,]+)"', p.stdout).group(1).split(",")]  # type: ignore[union-attr]
    assert asc == sorted(asc) and desc == sorted(asc, reverse=True) and len(asc) == 3 and len(set(asc)) == 2


def test_console_error_detection_works(tmp_path: Path) -> None:
    """The check above is not vacuous: a script error and a blocked network load are seen."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
                    'script-src \'unsafe-inline\'"><img src="http://127.0.0.1:9/x.png"><script>noSuchFn()</script>')
    p = chromium(page, tmp_path, "--dump-dom")
    assert CONSOLE_ERROR.search(p.stderr)


def hostile_dir(root: Path) -> Path:
    """An export directory whose manifest was edited by someone hostile."""
    out = root / "hostile"
    out.mkdir()
    evil = "<script>alert(1)</script>\x1b[2J\u202eevil"
    (out / "a.raw").write_bytes(b"\0" * 4096)
    (out / "b.raw").write_bytes(b"\0" * 4096)
    (out / "a.raw.boot.log").write_text("fine\n</pre><script>alert(2)</script>\x1b]0;title\x07\n")
    (out / "a.raw.boot.png").write_text("<svg onload=alert(3)>")  # not a PNG: never embedded
    os.symlink("/etc/passwd", out / "b.raw.boot.log")  # never followed
    (out / "b.raw.boot.png").write_bytes(PNG + b"\0" * (5 << 20))  # a PNG signature, but too large to embed
    entries = [
        {"id": evil, "output": "a.raw", "format": "raw", "size": 4096, "verified": True, "device": evil,
         "instance": evil, "digest": "blkblake3-4m:00", "domain": "/etc/passwd",
         "boot_test": {"ok": "yes<script>", "stage": evil, "reason": evil, "milestones": {evil: 1, "x": "<b>"},
                       "screenshot": "/etc/passwd", "vga_text": evil}},
        {"id": "vol-b", "output": "b.raw", "format": "raw", "verified": False},
        {"id": "vol-c", "output": "../../../../etc/passwd", "format": "raw", "verified": True},
        {"id": "vol-d", "output": "/etc/shadow", "format": "raw", "verified": True},
    ]
    (out / "manifest.json").write_text(json.dumps({"format": "euca2kvm-manifest", "version": 1, "volumes": entries}))
    return out


def test_hostile_manifest_renders_escaped(tmp_path: Path) -> None:
    out = hostile_dir(tmp_path)
    page = tmp_path / "report.html"
    p = cli("report", str(out), "-o", str(page), check=EXIT_FORMAT)  # outputs outside the directory: refused
    assert "\x1b" not in p.stderr
    text = page.read_text()
    assert text.count("<script") == 1  # the page's own sorting script; none from data
    assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    assert "root:x:0:0" not in text  # neither the symlinked log, nor outputs or a domain outside the directory
    assert "<svg" not in text and text.count("<img") == 0  # neither the non-PNG nor the oversized PNG embedded
    d, log = dom(page, tmp_path)
    assert d.scripts == 1 and not d.images
    assert not CONSOLE_ERROR.search(log), log[-3000:]
    # the id is shown as text, its control and bidi characters as escapes
    assert "<script>alert(1)</script>\\x1b[2J\\u202eevil" in d.rows
    assert len(d.rows) == 4


def test_markdown_report(migration: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    cli("report", str(migration["one"]), str(migration["two"]), "--plan", str(migration["plan"]), "--format", "md",
        "-o", str(out), "--allow-failed")
    md = out.read_text()
    table = md.split("\n\n")[3].splitlines()
    assert table[0].startswith("| Instance") and len(table) == 2 + 5
    assert [row.split(" | ")[-1] for row in table[2:]].count("failed |") == 2

    evil = cli("report", str(hostile_dir(tmp_path)), "--format", "md", check=EXIT_FORMAT).stdout  # to standard output
    assert "\\<script\\>alert(1)" in evil  # shown, escaped for Markdown
    assert "\x1b" not in evil and "\x07" not in evil and "root:x:0:0" not in evil
    # outside the console's indented code block (literal text in Markdown), no "<" or ">" is left unescaped
    prose = [ln for ln in evil.splitlines() if not ln.startswith("    ")]
    code = [ln for ln in evil.splitlines() if ln.startswith("    ")]
    assert not [ln for ln in prose if re.search(r"(?<!\\)[<>]", ln)]
    assert "    </pre><script>alert(2)</script>\\x1b]0;title\\x07" in code
    # every row of the summary keeps its cells: a hostile "|" or newline cannot add or split any
    rows = [ln for ln in evil.split("\n\n")[3].splitlines()[2:]]
    assert len(rows) == 4 and all(len(re.split(r"(?<!\\)\|", r)) == 12 for r in rows)


def test_exit_codes_and_nothing_half_written(tmp_path: Path) -> None:
    victim = tmp_path / "report.html"
    victim.write_bytes(b"victim")
    missing = cli("report", str(tmp_path / "nope"), "-o", str(victim), check=EXIT_USAGE)
    assert missing.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text('{"volumes": [{"id": 1}]}')
    cli("report", str(tmp_path / "bad"), "-o", str(victim), check=EXIT_FORMAT)
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "manifest.json").write_text("[" * 100000)
    cli("report", str(tmp_path / "deep" / "manifest.json"), "-o", str(victim), check=EXIT_FORMAT)
    cli("report", str(tmp_path / "bad" / "other.json"), check=EXIT_USAGE)
    cli("report", str(tmp_path / "bad"), "-o", str(tmp_path), check=EXIT_USAGE)
    plan = tmp_path / "plan.json"
    plan.write_text("{not json")
    good = hostile_dir(tmp_path)
    cli("report", str(good), "--plan", str(plan), "-o", str(victim), check=EXIT_FORMAT)
    assert victim.read_bytes() == b"victim"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_exit_status_is_the_most_severe_failure_unless_allowed(migration: dict[str, Any], tmp_path: Path) -> None:
    """report exits like verify: 0 when everything exported, verified and (where tested) booted; otherwise,
    once the report is written, the most severe failure (a failed boot test 6 before an instance the plan
    has that was never exported 5); --allow-failed writes the same report and exits 0."""
    one, two, plan = str(migration["one"]), str(migration["two"]), str(migration["plan"])
    out = tmp_path / "r.md"
    cli("report", one, "-o", str(out), "--format", "md", check=0)
    p = cli("report", one, "--plan", plan, "-o", str(out), "--format", "md", check=EXIT_IO)  # i-0de0c002 never exported
    assert "i-0de0c002" in p.stderr and out.read_text().count("failed |") == 1
    cli("report", one, two, "--plan", plan, "-o", str(out), "--format", "md", check=EXIT_VERIFY)
    failing = out.read_text()
    cli("report", one, two, "--plan", plan, "-o", str(out), "--format", "md", "--allow-failed", check=0)
    strip = re.compile(r"generated [^|\n]*")  # the report's own timestamp, if it prints one
    assert strip.sub("", out.read_text()) == strip.sub("", failing)
    cli("report", two, "--format", "md", check=EXIT_VERIFY)  # to standard output: the same status
