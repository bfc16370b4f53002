# SPDX-License-Identifier: Apache-2.0
"""A real sshd on 127.0.0.1 for the remote-source tests (tests/sshd.py), one per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sshd
from euca2kvm.remote import ssh


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
