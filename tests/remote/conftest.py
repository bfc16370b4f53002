# SPDX-License-Identifier: Apache-2.0
"""A real sshd on 127.0.0.1 for the remote-source tests (tests/sshd.py), one per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sshd


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd.Sshd]:
    server = sshd.start(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()
