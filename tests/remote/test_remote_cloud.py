# SPDX-License-Identifier: Apache-2.0
"""Cloud-level in-use evidence of an ssh:// source is taken on its host, read-only: a Eucalyptus
daemon running there and a tgt target whose backing store is the container (a fake ``tgtadm`` on
the PATH of the test sshd's sessions only, so a local check could not see it) refuse it as the
local checks do; the sh fallback of the process listing finds what the Python one finds."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sshd
from euca2kvm.eucalyptus import cloudinuse
from euca2kvm.remote import hostcheck, sources, ssh
from sshd import cli

Fixtures = tuple[Path, dict[str, Any]]
VOL = "vol-d0750001"


@pytest.fixture()
def daemon() -> Iterator[subprocess.Popen[bytes]]:
    """A process named like the storage controller's daemon (argv[0] eucalyptus-sc)."""
    p = subprocess.Popen(["bash", "-c", "exec -a eucalyptus-sc sleep 60"])
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def _fake_tgtadm(server: sshd.Sshd, body: str) -> Path:
    f = server.bin_dir / "tgtadm"
    f.write_text("#!/bin/sh\n" + body + "\n")
    f.chmod(0o755)
    return f


def test_cloud_evidence_on_remote_host(lvm_fixtures: Fixtures, options: ssh.Options, sshd_server: sshd.Sshd,
                                       tmp_path: Path, daemon: subprocess.Popen[bytes]) -> None:
    root, _ = lvm_fixtures
    vols = tmp_path / "vols"
    vols.mkdir()
    subprocess.run(["cp", "--sparse=always", str(root / "dots" / VOL), str(vols)], check=True, timeout=60)
    listing = (f"Target 3: iqn.2009-06.com.eucalyptus.sc:store7\n    LUN: 1\n"
               f"        Backing store path: {vols / VOL}\n")
    fake = _fake_tgtadm(sshd_server, f"cat <<'X'\n{listing}X")
    try:
        conn = ssh.connect(ssh.parse_url(sshd_server.url("/")))
        remote = hostcheck.RemoteHost(conn)
        state = cloudinuse.host_state(host=remote)
        assert (daemon.pid, "eucalyptus-sc") in state.processes and state.host_evidence()
        assert state.targets == [(3, "iqn.2009-06.com.eucalyptus.sc:store7", str(vols / VOL))]
        d = sources.discover_all([sshd_server.url(str(vols))], check_in_use=False)
        ev = cloudinuse.volume_evidence(VOL, d.find(VOL), None, state)
        assert [e.source for e in ev] == ["tgt"]
        sh = [p for p in remote.processes() if p[0] == daemon.pid]
        h = hostcheck.RemoteHost(conn)
        h.conn = _Fixed(conn, hostcheck._PROCS_SH)  # type: ignore[assignment]
        assert [p for p in h.processes() if p[0] == daemon.pid] == sh and sh
        plan = json.loads(cli(sshd_server, "plan", "-s", sshd_server.url(str(vols)), "-o", str(tmp_path / "o"),
                              "--json", check=None).stdout)
        assert any(b["kind"] == "in-use" for b in plan["host_blockers"])
        _fake_tgtadm(sshd_server, "echo 'tgtadm: internal error' >&2; exit 3")
        failed = cloudinuse.host_state(host=remote)
        assert failed.targets == [] and failed.tgtadm_error is not None
        _fake_tgtadm(sshd_server, "echo \"tgtadm: can't find the driver\" >&2; exit 22")
        assert cloudinuse.tgt_targets(host=remote) == ([], None)  # tgtd not running: no targets
    finally:
        fake.unlink()
    assert cloudinuse.tgt_targets(host=remote) == ([], None)  # no tgtadm on the host


class _Fixed:
    def __init__(self, conn: ssh.Connection, command: str) -> None:
        self.conn, self.command, self.name = conn, command, conn.name

    def run(self, _command: str, **_kw: Any) -> tuple[int, bytes]:
        return self.conn.run(self.command)
