# SPDX-License-Identifier: Apache-2.0
"""The one process runner: real processes, and properties only (status, bytes, typed error, exit code,
the child gone afterwards), never message texts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from _env import need_tools
from euca2kvm import procs
from euca2kvm.errors import EXIT_IO, EXIT_SIGINT, EXIT_TOOL, Interrupted, IOFailure, ToolError

# Every bounded wait below trips in well under a second; this is how long a test waits for a child
# to be gone (a loaded 2-core host).
GONE_WITHIN = 10.0
PY = sys.executable


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def gone(pid: int, within: float = GONE_WITHIN) -> bool:
    """The process ``pid`` no longer exists (or is a zombie nobody reaps, i.e. dead)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def pid_from(path: Path, within: float = GONE_WITHIN) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):
            return int(text)
        time.sleep(0.02)
    raise AssertionError(f"no pid in {path}")


def test_result_status_stdout_and_stderr_tail() -> None:
    res = procs.run(sh("printf 'out\\0bytes'; echo err >&2; exit 3"), timeout=10, ok=None)
    assert (res.status, res.stdout, res.stderr) == (3, b"out\0bytes", "err")
    assert procs.run(["true"], timeout=10).status == 0


def test_failure_is_typed_and_io_errno_is_an_io_error() -> None:
    with pytest.raises(ToolError) as e:
        procs.run(sh("exit 2"), timeout=10)
    assert e.value.exit_code == EXIT_TOOL
    with pytest.raises(IOFailure) as io:
        procs.run(sh("echo 'write failed: No space left on device' >&2; exit 1"), timeout=10)
    assert io.value.exit_code == EXIT_IO
    assert procs.run(sh("exit 1"), timeout=10, ok=(0, 1)).status == 1


def test_missing_program_is_a_tool_error() -> None:
    with pytest.raises(ToolError):
        procs.run(["/nonexistent/euca2kvm-no-such-tool"], timeout=10)
    with pytest.raises(ToolError):
        procs.Service(["/nonexistent/euca2kvm-no-such-tool"]).start()


def test_timeout_kills_the_child(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    with pytest.raises(ToolError):
        procs.run(sh(f"echo $$ > {pidfile}; exec sleep 60"), timeout=0.5)
    assert time.monotonic() - t0 < GONE_WITHIN
    assert gone(pid_from(pidfile))


def test_stall_timeout_counts_only_silence() -> None:
    # prints every 0.1 s for 1.5 s: never silent for 0.7 s, so it finishes
    res = procs.run([PY, "-c", "import time\nfor i in range(15):\n print(i, flush=True); time.sleep(0.1)"],
                    timeout=None, stall_timeout=0.7)
    assert res.stdout.split() == [str(i).encode() for i in range(15)]
    t0 = time.monotonic()
    with pytest.raises(ToolError):
        procs.run(sh("echo started; exec sleep 60"), timeout=None, stall_timeout=0.5)
    assert time.monotonic() - t0 < GONE_WITHIN
    with pytest.raises(AssertionError):
        procs.run(["true"], timeout=None)  # no bound at all is refused


def test_stdout_is_bounded() -> None:
    with pytest.raises(ToolError):
        procs.run(["yes"], timeout=30, max_stdout=1 << 20)


def test_stdin_larger_than_a_pipe_buffer_does_not_deadlock() -> None:
    data = os.urandom(3 << 20)  # cat writes back while we still write: both pipes must be served
    assert procs.run(["cat"], timeout=30, stdin=data).stdout == data


def test_sigint_reaching_the_tool_is_an_interrupt() -> None:
    with pytest.raises(Interrupted) as e:
        procs.run(sh("kill -INT $$; sleep 5"), timeout=10)
    assert e.value.exit_code == EXIT_SIGINT


def test_an_exception_in_the_caller_kills_the_child(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    def cancel(chunk: bytes) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        procs.run(sh(f"echo $$ > {pidfile}; echo progress; exec sleep 60"), timeout=60, on_output=cancel)
    assert gone(pid_from(pidfile))


def test_c_locale_environment_and_cwd(tmp_path: Path) -> None:
    res = procs.run(sh("echo $LC_ALL $EXTRA; pwd"), timeout=10, env={"EXTRA": "x"}, cwd=tmp_path)
    assert res.stdout.decode().split() == ["C", "x", str(tmp_path)]


def test_passed_descriptor_is_readable_by_the_child(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"through fd")
    fd = os.open(src, os.O_RDONLY)
    try:
        assert procs.run(["cat", f"/dev/fd/{fd}"], timeout=10, pass_fds=(fd,)).stdout == b"through fd"
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["run", "service"])
def test_children_die_with_euca2kvm(tmp_path: Path, kind: str) -> None:
    """SIGKILL of the euca2kvm process (nothing of it runs any more) still takes its child down."""
    need_tools("setpriv")
    pidfile = tmp_path / "pid"
    child = sh(f"echo $$ > {pidfile}; exec sleep 60")
    body = {"run": f"procs.run({child!r}, timeout=60)",
            "service": f"s = procs.Service({child!r}).start(); time.sleep(60)"}[kind]
    parent = subprocess.Popen([PY, "-c", textwrap.dedent(f"""
        import time
        from euca2kvm import procs
        {body}
    """)])
    try:
        pid = pid_from(pidfile)
        parent.send_signal(signal.SIGKILL)
        parent.wait(GONE_WITHIN)
        assert gone(pid)
    finally:
        parent.kill()
        parent.wait()


def test_service_ready_tail_and_stop(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    with procs.Service(sh(f"echo warming up >&2; sleep 0.3; : > {flag}; exec sleep 60")) as svc:
        got = svc.wait_ready(lambda: flag.exists() or None, timeout=GONE_WITHIN)
        assert got is True and svc.alive() and svc.tail() == "warming up"
        pid = svc.pid
    assert not svc.alive() and svc.returncode == -signal.SIGTERM and gone(pid)


def test_service_exiting_before_ready_is_a_tool_error() -> None:
    with procs.Service(sh("echo cannot open >&2; exit 1")) as svc, pytest.raises(ToolError) as e:
        svc.wait_ready(lambda: None, timeout=GONE_WITHIN)
    assert e.value.exit_code == EXIT_TOOL and svc.returncode == 1


def test_service_not_ready_in_time_is_a_tool_error() -> None:
    t0 = time.monotonic()
    with procs.Service(["sleep", "60"]) as svc, pytest.raises(ToolError):
        svc.wait_ready(lambda: None, timeout=0.3)
    assert time.monotonic() - t0 < GONE_WITHIN and not svc.alive()


def test_service_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    svc = procs.Service(sh(f"trap '' TERM; echo $$ > {pidfile}; while :; do sleep 0.1; done"), stop_grace=0.3)
    with svc:
        pid = pid_from(pidfile)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < GONE_WITHIN and svc.returncode == -signal.SIGKILL and gone(pid)


def test_service_log_file_never_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    log = tmp_path / "qemu.log"
    log.symlink_to(victim)
    with pytest.raises(IOFailure):
        procs.Service(sh("echo hi"), log_path=log).start()
    assert victim.read_bytes() == b"keep"
    log.unlink()
    log.write_bytes(b"\xff" * 10000)  # garbage from an earlier run: truncated, not appended to
    with procs.Service(sh("echo to-stdout; echo to-stderr >&2"), log_path=log) as svc:
        assert svc.wait(GONE_WITHIN) == 0
    assert log.read_bytes() == b"to-stdout\nto-stderr\n" and svc.tail() == "to-stdout\nto-stderr"
