# SPDX-License-Identifier: Apache-2.0
"""ssh:// sources against a real sshd on 127.0.0.1: scan, inspect and export equal the local results,
unknown or changed host keys are refused before logging in, holes never cross the network, a source
in use on the remote host is refused, and the remote files are never written."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

import sshd
from _env import need_root, need_tools
from euca2kvm.blocks import Kind, data_bytes
from euca2kvm.errors import EXIT_FORMAT, EXIT_IN_USE, EXIT_USAGE, ToolError
from euca2kvm.eucalyptus.inuse import holders
from euca2kvm.lvm.source import LvmSource
from euca2kvm.remote import files as rfiles
from euca2kvm.remote import hostcheck, sources, ssh
from sshd import cli

Fixtures = tuple[Path, dict[str, Any]]
MiB = 1 << 20


def _summary(volumes: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(v["id"], v["kind"], v["vg"], v["lv"], v["size"], v["segment_types"], v["tags"], v["problem"],
             [os.path.basename(f) for f in v["files"]], v["in_use"]) for v in volumes]


@pytest.mark.parametrize("scenario", ["euca", "thin"])
def test_scan_over_ssh_equals_local(lvm_fixtures: Fixtures, sshd_server: sshd.Sshd, scenario: str) -> None:
    root, _ = lvm_fixtures
    local = json.loads(cli(None, "scan", "-s", str(root / scenario), "--json").stdout)
    remote = json.loads(cli(sshd_server, "scan", "-s", sshd_server.url(str(root / scenario)), "--json").stdout)
    assert local["volumes"] and _summary(remote["volumes"]) == _summary(local["volumes"])
    for v in remote["volumes"]:
        assert all(f.startswith(sshd_server.url("/")) for f in v["files"])


@pytest.mark.parametrize("scenario, ident", [("euca", "vol-4708bf47"), ("striped", "vg-str/lv-stripe")])
def test_export_over_ssh_equals_local(lvm_fixtures: Fixtures, sshd_server: sshd.Sshd, tmp_path: Path,
                                      scenario: str, ident: str) -> None:
    root, _ = lvm_fixtures
    lo, ro = tmp_path / "local", tmp_path / "remote"
    ro.mkdir()
    (ro / "unrelated").write_bytes(os.urandom(4096))  # a destination with something in it already
    cli(None, "export", ident, "-s", str(root / scenario), "-o", str(lo))
    cli(sshd_server, "export", ident, "-s", sshd_server.url(str(root / scenario)), "-o", str(ro))
    ml = json.loads((lo / "manifest.json").read_text())["volumes"]
    mr = json.loads((ro / "manifest.json").read_text())["volumes"]
    assert [v["digest"] for v in mr] == [v["digest"] for v in ml] and ml[0]["digest"]
    out = ml[0]["output"]
    assert subprocess.run(["cmp", str(lo / out), str(ro / out)], timeout=120).returncode == 0
    cli(None, "verify", str(ro / "manifest.json"))


def test_inspect_over_ssh_equals_local(lvm_fixtures: Fixtures, sshd_server: sshd.Sshd) -> None:
    root, _ = lvm_fixtures
    local = json.loads(cli(None, "inspect", "vg-mseg/lvA", "-s", str(root / "multiseg"), "--json").stdout)
    remote = json.loads(cli(sshd_server, "inspect", "vg-mseg/lvA", "-s", sshd_server.url(str(root / "multiseg")),
                            "--json").stdout)
    prefix = sshd_server.url("")
    assert json.loads(json.dumps(remote).replace(prefix, "")) == local


def _accepted(server: sshd.Sshd) -> int:
    return server.log.read_text(errors="replace").count("Accepted publickey")


def test_unknown_host_key_refused(lvm_fixtures: Fixtures, sshd_server: sshd.Sshd, tmp_path: Path) -> None:
    root, _ = lvm_fixtures
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True, timeout=30)
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd_server.port} " + " ".join(Path(f"{other}.pub").read_text().split()[:2])
                     + "\n")
    before = _accepted(sshd_server)
    for known in (empty, wrong):
        p = cli(sshd_server, "scan", "-s", sshd_server.url(str(root / "euca")), known=known, check=EXIT_USAGE)
        assert "SHA256:" in p.stderr  # the fingerprint, to check with the host's administrator
    assert _accepted(sshd_server) == before  # never logged in


@pytest.mark.parametrize("ident", ["snap-5e6f7a8b", "vol-4708bf47"])  # a raw snapshot file, an LVM container
def test_holes_not_transferred(lvm_fixtures: Fixtures, options: ssh.Options, sshd_server: sshd.Sshd,
                               ident: str) -> None:
    root, truth = lvm_fixtures
    snap = root / "euca" / ident  # 1 GiB sparse files with a few small patches of data
    want = (truth["raw"][0]["sha256"] if ident.startswith("snap-") else
            next(lv for lv in truth["lvs"] if lv["dir"] == "euca")["sha256"])
    local_data = 0
    with open(snap, "rb") as f:
        off, size = 0, os.fstat(f.fileno()).st_size
        while off < size:
            try:
                a = os.lseek(f.fileno(), off, os.SEEK_DATA)
            except OSError:
                break
            b = os.lseek(f.fileno(), a, os.SEEK_HOLE)
            local_data, off = local_data + b - a, b
    d = sources.discover_all([sshd_server.url(str(root / "euca"))], check_in_use=False)
    vol = d.find(ident)
    opened: list[rfiles.RemoteFile] = []

    def opener(path: str) -> rfiles.RemoteFile:
        f = rfiles.open_url(path)
        opened.append(f)
        return f

    src = LvmSource(vol.extent_map(), vol.id, opener)
    h = hashlib.sha256()
    buf = bytearray(4 * MiB)
    for r in src.ranges(0, src.size):
        for o in range(r.start, r.end, len(buf)):
            n = min(len(buf), r.end - o)
            if r.kind is Kind.DATA:
                src.read_into(o, memoryview(buf)[:n])
                h.update(memoryview(buf)[:n])
            else:
                h.update(bytes(n))
    src.close()
    assert h.hexdigest() == want
    assert 0 < data_bytes(src) <= local_data < size // 100
    assert sum(f.bytes_read for f in opened) <= local_data  # nothing but the data crossed the network


def test_remote_file_reads_exact_bytes(tmp_path: Path, options: ssh.Options, sshd_server: sshd.Sshd) -> None:
    p = tmp_path / "f"
    data = os.urandom(3 * MiB + 123)
    with open(p, "wb") as f:
        f.write(data)
        f.truncate(64 * MiB)
    rf = rfiles.open_url(sshd_server.url(str(p)))
    assert rf.size() == 64 * MiB
    assert rf.data_ranges(0, 64 * MiB)[0][0] == 0 and sum(b - a for a, b in rf.data_ranges(0, 64 * MiB)) < 8 * MiB
    for off, n in [(0, 1), (4095, 4097), (MiB - 1, 2 * MiB + 124), (len(data) - 10, 10)]:
        assert rf.read(off, n) == data[off:off + n]
    buf = bytearray(100)
    assert rf.pread_into(64 * MiB - 10, memoryview(buf)) == 10  # short only at the end
    rf.close()


def test_symlinks_not_followed(lvm_fixtures: Fixtures, sshd_server: sshd.Sshd, tmp_path: Path) -> None:
    root, _ = lvm_fixtures
    src = tmp_path / "vols"
    src.mkdir()
    os.symlink(root / "euca" / "vol-4708bf47", src / "vol-4708bf47")
    scan = json.loads(cli(sshd_server, "scan", "-s", sshd_server.url(str(src)), "--json").stdout)
    assert scan["volumes"] == []
    cli(sshd_server, "scan", "-s", sshd_server.url(str(src / "vol-4708bf47")), check=EXIT_USAGE)


def _state(d: Path) -> dict[str, tuple[int, int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in sorted(d.iterdir())}


def test_in_use_listing_without_python(options: ssh.Options, sshd_server: sshd.Sshd, tmp_path: Path) -> None:
    """The POSIX sh fallback (a host without Python) finds what the Python one-liner finds."""
    need_root()
    need_tools("losetup")
    f = tmp_path / "c"
    f.write_bytes(b"x" * 65536)
    loop = subprocess.run(["losetup", "-f", "--show", "-r", str(f)], capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()
    holder = subprocess.Popen(["sleep", "60"], stdin=open(f, "rb"))  # noqa: SIM115
    try:
        conn = ssh.connect(ssh.parse_url(sshd_server.url("/")))
        found = []
        for command in (hostcheck.python_command(hostcheck._PY, [], "exit 9"), hostcheck._SCRIPT):
            h = hostcheck.RemoteHost(conn)
            h.conn = _Fixed(conn, command)  # type: ignore[assignment]
            found.append(sorted(str(x) for x in holders([sshd_server.url(str(f))], [], h)))
        assert found[0] == found[1] and any(loop in x for x in found[0])
        assert any(f"pid {holder.pid} (sleep)" in x for x in found[0])
    finally:
        holder.kill()
        holder.wait()
        subprocess.run(["losetup", "-d", loop], check=True, timeout=30)


class _Fixed:
    """A connection that runs one given command whatever it is asked."""

    def __init__(self, conn: ssh.Connection, command: str) -> None:
        self.conn, self.command, self.name = conn, command, conn.name

    def run(self, _command: str) -> tuple[int, bytes]:
        return self.conn.run(self.command)


def test_in_use_on_remote_host_refused(lvm_fixtures: Fixtures, sshd_server: sshd.Sshd, tmp_path: Path) -> None:
    need_root()
    need_tools("losetup")
    root, _ = lvm_fixtures
    src = tmp_path / "vols"
    src.mkdir()
    subprocess.run(["cp", "--sparse=always", str(root / "dots" / "vol-d0750001"), str(src)], check=True, timeout=60)
    before = _state(src)
    loop = subprocess.run(["losetup", "-f", "--show", "-r", str(src / "vol-d0750001")], capture_output=True,
                          text=True, check=True, timeout=30).stdout.strip()
    out = tmp_path / "out"
    try:
        p = cli(sshd_server, "export", "vol-d0750001", "-s", sshd_server.url(str(src)), "-o", str(out),
                check=EXIT_IN_USE)
        assert loop in p.stderr
        assert not (out / "vol-d0750001.raw").exists()
    finally:
        subprocess.run(["losetup", "-d", loop], check=True, timeout=30)
    holder = subprocess.Popen(["sleep", "60"], stdin=open(src / "vol-d0750001", "rb"))  # noqa: SIM115
    try:
        p = cli(sshd_server, "export", "vol-d0750001", "-s", sshd_server.url(str(src)), "-o", str(out),
                check=EXIT_IN_USE)
        assert f"pid {holder.pid} (sleep)" in p.stderr
    finally:
        holder.kill()
        holder.wait()
    url = sshd_server.url(str(src))
    cli(sshd_server, "inspect", "vol-d0750001", "-s", url)
    cli(sshd_server, "export", "vol-d0750001", "-s", url, "-o", str(out))
    assert _state(src) == before  # scan, inspect, export: nothing written, created or touched remotely


def test_plan_over_ssh_equals_local(lvm_fixtures: Fixtures, sshd_server: sshd.Sshd, tmp_path: Path) -> None:
    root, _ = lvm_fixtures
    out = str(tmp_path / "out")
    local = json.loads(cli(None, "plan", "-s", str(root / "euca"), "-o", out, "--json").stdout)
    remote = json.loads(cli(sshd_server, "plan", "-s", sshd_server.url(str(root / "euca")), "-o", out,
                            "--json").stdout)
    for p in (local, remote):
        p.pop("free_bytes", None)
    assert local["volumes"] and json.loads(json.dumps(remote).replace(sshd_server.url(""), "")) == local


def test_remote_commands_bounded(options: ssh.Options, sshd_server: sshd.Sshd) -> None:
    """A host that prints without end, hangs, or fails is refused with a typed error, never buffered
    without bound or waited for forever."""
    conn = ssh.connect(ssh.parse_url(sshd_server.url("/")))
    with pytest.raises(ToolError):
        conn.run("head -c 10000000 /dev/zero", limit=65536)
    with pytest.raises(ToolError):
        conn.run("sleep 30", timeout=1)
    with pytest.raises(ToolError):
        conn.run("head -c 1000000 /dev/zero >&2; exit 3")  # a stderr flood does not stall the call
    assert conn.run("printf ok")[1] == b"ok"  # the connection is still usable


def test_remote_file_that_is_no_volume(sshd_server: sshd.Sshd, tmp_path: Path) -> None:
    """As locally: an explicitly named file that is no container is exit 3 and nothing is written."""
    f = tmp_path / "disk.img"
    f.write_bytes(os.urandom(MiB))
    cli(sshd_server, "scan", "-s", sshd_server.url(str(f)), check=EXIT_FORMAT)
    cli(sshd_server, "export", sshd_server.url(str(f)), "-o", str(tmp_path / "out"), check=EXIT_FORMAT)
    assert not (tmp_path / "out").exists()
    cli(sshd_server, "scan", "-s", sshd_server.url(str(tmp_path / "missing")), check=EXIT_USAGE)
