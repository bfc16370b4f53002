# SPDX-License-Identifier: Apache-2.0
"""Remote files are fingerprinted as local ones are: the stamp taken on the host equals the local
``os.stat`` (Python and sh fallback alike), an export over ssh:// records its files by URL, a
container written during the export is refused (exit 5, nothing published), and a re-run reuses a
verified output only while the remote file is unchanged."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

import sshd
from euca2kvm.cli.export_cmd import volume_source
from euca2kvm.errors import EXIT_IO, IOFailure
from euca2kvm.export.formats import output_format
from euca2kvm.export.pipeline import ExportOptions, export_source, fingerprint
from euca2kvm.remote import files as rfiles
from euca2kvm.remote import sources, ssh
from sshd import cli

Fixtures = tuple[Path, dict[str, Any]]
VOL = "vol-d0750001"  # 12 MiB LV in a small container of the "dots" scenario


def _copy(root: Path, dst: Path) -> Path:
    dst.mkdir()
    subprocess.run(["cp", "--sparse=always", str(root / "dots" / VOL), str(dst)], check=True, timeout=60)
    return dst / VOL


def test_remote_stamp_equals_local(options: ssh.Options, sshd_server: sshd.Sshd, tmp_path: Path) -> None:
    f = tmp_path / "c"
    f.write_bytes(os.urandom(5000))
    url = sshd_server.url(str(f))
    local = fingerprint([str(f)])[0]
    remote = fingerprint([url])[0]
    assert remote == {**local, "path": url}
    conn = ssh.connect(ssh.parse_url(url))
    # Without a Python on the host: GNU stat, whole seconds, same size and inode.
    raw = conn.run(rfiles._STAT_FALLBACK.format(paths=ssh.q(str(f))))[1].decode().split()
    assert raw == ["S", str(local["size"]), str(local["mtime_ns"] // 10**9 * 10**9),
                   str(local["ctime_ns"] // 10**9 * 10**9), str(local["ino"])]
    with pytest.raises(IOFailure):
        fingerprint([sshd_server.url(str(tmp_path / "missing"))])


def test_remote_container_written_during_export(lvm_fixtures: Fixtures, options: ssh.Options,
                                                sshd_server: sshd.Sshd, tmp_path: Path) -> None:
    root, _ = lvm_fixtures
    container = _copy(root, tmp_path / "vols")
    vol = sources.find_url(sources.discover_all([sshd_server.url(str(container))]), sshd_server.url(str(container)))
    src = volume_source(vol)
    assert src.files == [sshd_server.url(str(container))]
    out = tmp_path / "out"
    out.mkdir()
    appended: list[int] = []

    def write_remote(_n: int) -> None:  # the host's file grows while it is read
        if not appended:
            with open(container, "ab") as fh:
                appended.append(fh.write(b"\0" * 512))

    with pytest.raises(IOFailure) as err:
        export_source(src, out, ExportOptions(output_format("raw")), on_read=write_remote)
    assert err.value.exit_code == EXIT_IO and appended
    assert not (out / f"{VOL}.raw").exists() and not (out / "manifest.json").exists()


def test_remote_rerun_reuses_only_unchanged(lvm_fixtures: Fixtures, sshd_server: sshd.Sshd, tmp_path: Path) -> None:
    root, _ = lvm_fixtures
    container = _copy(root, tmp_path / "vols")
    url = sshd_server.url(str(tmp_path / "vols"))
    out = tmp_path / "out"

    def export() -> tuple[dict[str, Any], int]:
        cli(sshd_server, "export", VOL, "-s", url, "-o", str(out))
        entry = json.loads((out / "manifest.json").read_text())["volumes"][0]
        return entry, (out / f"{VOL}.raw").stat().st_ino

    first, ino = export()
    assert first["files"] == [sshd_server.url(str(container))]
    assert [s["path"] for s in first["source"]] == first["files"] and first["source"][0]["size"] > 0
    again, ino2 = export()
    assert ino2 == ino and again["source"] == first["source"]  # reused: the same published file
    os.utime(container)  # touched between runs: exported again
    third, ino3 = export()
    assert ino3 != ino and third["source"] != first["source"] and third["digest"] == first["digest"]


def test_streamed_reads_exact(options: ssh.Options, sshd_server: sshd.Sshd, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Block reads through the reader channel, from several threads at once, are the file's bytes;
    short only at the end; a symlink is refused; a host without Python reads through SFTP alike."""
    from concurrent.futures import ThreadPoolExecutor

    from euca2kvm.remote import stream

    mib = 1 << 20
    f = tmp_path / "f"
    data = os.urandom(13 * mib + 77)
    f.write_bytes(data)
    blocks = [(o, min(4 * mib, len(data) - o)) for o in range(0, len(data), 4 * mib)]

    def read_all(rf: rfiles.RemoteFile) -> bytes:
        def one(b: tuple[int, int]) -> bytes:
            buf = bytearray(b[1])
            assert rf.pread_into(b[0], memoryview(buf)) == b[1]
            return bytes(buf)

        with ThreadPoolExecutor(4) as ex:
            return b"".join(ex.map(one, blocks))

    rf = rfiles.open_url(sshd_server.url(str(f)))
    assert read_all(rf) == data and isinstance(rf._stream, stream.Stream)
    buf = bytearray(2 * mib)
    assert rf.pread_into(len(data) - 10, memoryview(buf)) == 10 and bytes(buf[:10]) == data[-10:]
    assert rf.pread_into(len(data) + 5, memoryview(buf)) == 0
    rf.close()
    link = tmp_path / "link"
    os.symlink(f, link)
    st = stream.Stream(ssh.connect(ssh.parse_url(sshd_server.url("/"))), str(link), str(link))
    with pytest.raises(IOFailure):
        st.start()
    monkeypatch.setattr(stream, "python_command", lambda *_a: "exit 0")  # a host without Python
    rf = rfiles.open_url(sshd_server.url(str(f)))
    assert read_all(rf) == data and rf._stream == stream.UNAVAILABLE
    rf.close()


def test_reader_channels_bounded(options: ssh.Options, sshd_server: sshd.Sshd, tmp_path: Path) -> None:
    """Files beyond the connection's reader slots read over SFTP, with the same bytes; a closed
    file gives its slot back."""
    import threading

    from euca2kvm.remote import stream

    f = tmp_path / "f"
    data = os.urandom(2 << 20)
    f.write_bytes(data)
    conn = ssh.connect(ssh.parse_url(sshd_server.url("/")))
    conn.readers = threading.BoundedSemaphore(1)
    first, second = rfiles.open_url(sshd_server.url(str(f))), rfiles.open_url(sshd_server.url(str(f)))
    for rf in (first, second):
        assert rf.read(0, len(data)) == data
    assert isinstance(first._stream, stream.Stream) and second._stream == stream.UNAVAILABLE
    first.close()
    second.close()
    third = rfiles.open_url(sshd_server.url(str(f)))
    assert third.read(0, len(data)) == data and isinstance(third._stream, stream.Stream)
    third.close()
