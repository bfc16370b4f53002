# SPDX-License-Identifier: Apache-2.0
"""Start-up cost: the command line imports a backend only when its source or command is used."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Never needed to build the parser or run scan/export/verify of local containers.
BACKENDS = ("euca2kvm.rbd.image", "euca2kvm.rbd.lib", "ctypes", "asyncssh", "boto3", "botocore", "jinja2",
            "psycopg", "euca2kvm.remote", "euca2kvm.report", "euca2kvm.kvm", "euca2kvm.eucalyptus.san",
            "euca2kvm.planning")
# Not needed by commands that read no container (verify, report, manifest, --version).
LVM = ("euca2kvm.lvm.scan", "euca2kvm.lvm.extents", "euca2kvm.lvm.reader")


def loaded(code: str) -> set[str]:
    """The modules (and their packages) loaded after running ``code`` in a fresh interpreter."""
    p = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    return set(json.loads(p.stdout.splitlines()[-1]))


def heavy(mods: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in mods if any(m == n or m.startswith(n + ".") for n in names))


def test_import_cli_loads_no_backend() -> None:
    mods = loaded("import euca2kvm.cli")
    assert heavy(mods, BACKENDS + LVM) == []
    assert "importlib.metadata" not in mods  # --version looks it up when asked


@pytest.mark.parametrize("command", ["scan", "export", "verify", "report", "manifest"])
def test_parser_of_local_commands_loads_no_backend(command: str) -> None:
    mods = loaded(f"import sys\nsys.argv = ['euca2kvm', {command!r}]\nfrom euca2kvm.cli import build_parser\n"
                  "build_parser()")
    assert heavy(mods, BACKENDS) == [], command


def test_version_loads_no_command() -> None:
    mods = loaded("import contextlib, io\nfrom euca2kvm.cli import main\n"
                  "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
                  "    main(['--version'])")
    assert heavy(mods, BACKENDS + LVM) == []
    assert not [m for m in mods if m.startswith("euca2kvm.cli.") and m.endswith("_cmd")]


def test_version_still_prints_the_version() -> None:
    p = subprocess.run([sys.executable, "-m", "euca2kvm", "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("euca2kvm ") and len(p.stdout.split()) == 2


# A raw export of two local containers (--all) into a fresh OUTDIR: what it must never load. The
# manifest it reads back before recording the second volume is its own (no schema validator); the
# in-use check starts no process where there is no tgtd; nothing of the conversion path is loaded.
EXPORT_NEVER = ("jsonschema", "euca2kvm.export.nbd", "euca2kvm.export.served", "euca2kvm.export.qemu_img",
                "euca2kvm.export.imagedigest")


def test_raw_export_loads_no_validator_process_runner_or_conversion(tmp_path: Path) -> None:
    from lvmwriter import Mda, build_pv, linear_lv, vg_text

    vols, mib = ["vol-5a0e0001", "vol-5a0e0002"], 8
    (tmp_path / "src").mkdir()
    for i, vol in enumerate(vols):  # uuids differ per container: two VGs, two PVs
        text = vg_text(f"vg-{vol}", f"StartV-0000-1111-2222-3333-4444-55555{i}", 1,
                       [("pv0", f"Start{i}-yyyy-yyyy-yyyy-yyyy-yyyy-yyyyyy", 2048, mib // 4)],
                       linear_lv(f"euca-{vol}", f"StartL-0000-1111-2222-3333-4444-55555{i}", mib // 4, tags=f'"{vol}"'))
        with open(tmp_path / "src" / vol, "wb") as f:
            f.write(build_pv(1 << 20, f"Start{i}" + "y" * 26, [Mda(4096, 64 * 1024, text=text)], 1 << 20))
            f.write(os.urandom(mib << 20))
    out = tmp_path / "out"
    mods = loaded("from euca2kvm.cli import main\n"
                  f"assert main(['export', '--all', '-s', {str(tmp_path / 'src')!r}, '-o', {str(out)!r}]) == 0")
    never = EXPORT_NEVER + (() if shutil.which("tgtadm") else ("euca2kvm.procs",))
    assert heavy(mods, never) == []
    assert sorted(v["id"] for v in json.loads((out / "manifest.json").read_text())["volumes"]) == vols


def test_start_up_runs_without_the_collector_and_the_command_with_it(tmp_path: Path) -> None:
    """``run`` keeps the collector off while the command line is imported and parsed (its passes over
    start-up's objects cost more than a small export), on while the command runs, and frozen for the
    exit; atexit handlers still run and the exit code is kept."""
    code = ("import atexit, gc, sys\nfrom euca2kvm.cli import run, scan_cmd\n"
            "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0, flush=True))\n"
            "real = scan_cmd.do_scan\n"
            "def do_scan(args):\n    print('collector', gc.isenabled(), flush=True)\n    return real(args)\n"
            "scan_cmd.do_scan = do_scan\n"
            f"sys.argv = ['euca2kvm', 'scan', '-s', {str(tmp_path)!r}, '--json']\nrun()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert lines[0] == "collector True" and lines[-1] == "frozen True"
    assert json.loads("\n".join(lines[1:-1]))["volumes"] == []
    # python -m euca2kvm (the collector off before the command line is imported): a usage error is still exit 2
    p = subprocess.run([sys.executable, "-m", "euca2kvm", "scan", "--no-such-option"], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr
