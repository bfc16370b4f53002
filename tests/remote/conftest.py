# SPDX-License-Identifier: Apache-2.0
"""A real sshd on 127.0.0.1 for the remote-source tests (tests/sshd.py), one per session."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sshd
from _env import need_root, need_tools
from euca2kvm.remote import ssh

# cp of the shared fixtures (about 15 MiB of data in 3.4 GiB of sparse files) takes well under a second.
COPY_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def lvm_fixtures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A private, sparse copy of the shared lvm2 fixtures. The "remote" host is this machine, so its in-use
    checks see every process here: a shared fixture file that another test of this session (or another run)
    holds open would make these exports refuse rightly, for a reason that is not theirs."""
    need_root()
    need_tools("lvm", "pvck", "losetup")
    import lvmfix

    root, truth = lvmfix.cached()
    dst = tmp_path_factory.mktemp("fixtures") / root.name
    subprocess.run(["cp", "-a", "--sparse=always", str(root), str(dst)], check=True, timeout=COPY_TIMEOUT_S)
    return dst, truth


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd.Sshd]:
    server = sshd.start(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def options(sshd_server: sshd.Sshd) -> ssh.Options:
    """In-process use of the remote modules, with the test server's key and known_hosts."""
    old = ssh.OPTIONS
    ssh.OPTIONS = ssh.Options(known_hosts=str(sshd_server.known_hosts), identity=str(sshd_server.identity))
    yield ssh.OPTIONS
    ssh.OPTIONS = old
    ssh.close_all()
