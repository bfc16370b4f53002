# SPDX-License-Identifier: Apache-2.0
"""Run ``qemu-system-x86_64`` safely: a process context manager, an HMP monitor client, accelerator choice.

Every QEMU process started here is owned by a :class:`QemuProcess` context manager, which always stops it
on exit (monitor ``quit``, then SIGTERM, then SIGKILL), so no caller can leak a running guest.

Accelerator choice (:func:`accelerator`): ``EUCA2KVM_ACCEL=tcg|kvm`` wins; otherwise KVM is used only when a
probe guest really runs under it. Some hosts (e.g. PVM-based nested KVM) create VMs fine but hang or abort as
soon as a guest leaves real mode, so opening ``/dev/kvm`` proves nothing. The probe boots a tiny SYSLINUX disk
(its core runs in protected mode with real-mode BIOS thunks, the step that fails on such hosts) and waits for
SYSLINUX's own "Loading <name>" message on the serial port. The result is cached for the process.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from euca2kvm import procs
from euca2kvm.errors import ToolError, UsageError
from euca2kvm.safefs import private_tmp

log = logging.getLogger(__name__)

QEMU_SYSTEM = "qemu-system-x86_64"
ACCEL_ENV = "EUCA2KVM_ACCEL"
ACCELERATORS = ("tcg", "kvm")

# After SIGTERM QEMU flushes its files and exits within well under a second; give it 3 s before SIGKILL.
TERMINATE_GRACE = 3.0
# A monitor command (pmemsave of 4000 bytes, screendump, info status) answers in milliseconds; 5 s means
# the QEMU main loop is stuck, and the caller must not wait longer than that.
MONITOR_COMMAND_TIMEOUT = 5.0
# QEMU creates its monitor socket before the guest starts; 10 s covers a loaded 2-core host.
MONITOR_CONNECT_TIMEOUT = 10.0
# Polling period while waiting for a socket or a file to appear.
POLL_INTERVAL = 0.05
# Bytes of QEMU's own stderr/stdout kept for error messages.
LOG_TAIL_BYTES = 4096
# Longest HMP reply kept; a reply larger than this is a QEMU bug or not a QEMU monitor.
MONITOR_REPLY_LIMIT = 1 << 20

HMP_PROMPT = b"(qemu) "


def qemu_binary() -> str:
    """Path of qemu-system-x86_64, or :class:`ToolError` if it is not installed."""
    path = shutil.which(QEMU_SYSTEM)
    if path is None:
        raise ToolError(f"{QEMU_SYSTEM} not found (Debian package qemu-system-x86)")
    return path


def hmp_quote(path: Path | str) -> str:
    """Quote a file name for an HMP command line.

    HMP parses an unquoted ``/a/b`` as an arithmetic expression, so file names must be quoted; inside quotes
    it understands backslash escapes. Control characters cannot be passed at all.
    """
    text = str(path)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise UsageError(f"file name with control characters cannot be passed to the QEMU monitor: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class QemuProcess(procs.Service):
    """A QEMU process that is always stopped when the ``with`` block ends (a :class:`procs.Service`).

    ``args`` are the arguments after the binary name. QEMU's stdout and stderr go to ``log_path``.
    It runs in its own session: a Ctrl-C in the terminal must not reach the guest first.
    """

    def __init__(self, args: list[str], log_path: Path, cwd: Path | None = None) -> None:
        super().__init__([qemu_binary(), *args], log_path=log_path, cwd=cwd, new_session=True,
                         stop_grace=TERMINATE_GRACE, what="QEMU")
        self.args = self.argv
        self.log_path: Path = log_path

    def __enter__(self) -> QemuProcess:
        log.debug("Starting %s", " ".join(self.args))
        self.start()
        return self

    def output_tail(self) -> str:
        """The last few KiB QEMU wrote to stdout/stderr."""
        return self.tail(LOG_TAIL_BYTES)


class HmpMonitor:
    """Minimal client for QEMU's human monitor on a unix socket (``-monitor unix:PATH,server=on,wait=off``)."""

    def __init__(self, sock_path: Path, proc: QemuProcess, connect_timeout: float = MONITOR_CONNECT_TIMEOUT):
        self._sock: socket.socket | None = None
        deadline = time.monotonic() + connect_timeout
        last_error: OSError | None = None
        while time.monotonic() < deadline:
            if not proc.alive():
                raise ToolError(f"QEMU exited before its monitor was ready: {proc.output_tail()}")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(sock_path))
            except OSError as e:
                s.close()
                last_error = e
                time.sleep(POLL_INTERVAL)
                continue
            self._sock = s
            break
        if self._sock is None:
            raise ToolError(f"cannot connect to the QEMU monitor {sock_path}: {last_error}")
        self._read_prompt(MONITOR_COMMAND_TIMEOUT)  # the greeting banner

    def _read_prompt(self, timeout: float) -> str:
        assert self._sock is not None
        deadline = time.monotonic() + timeout
        buf = bytearray()
        while not buf.endswith(HMP_PROMPT):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ToolError("QEMU monitor did not answer in time")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as e:
                raise ToolError(f"QEMU monitor connection failed: {e}") from e
            if not chunk:
                raise ToolError("QEMU monitor closed the connection")
            buf += chunk
            if len(buf) > MONITOR_REPLY_LIMIT:
                raise ToolError("QEMU monitor reply too long")
        return buf[: -len(HMP_PROMPT)].decode("utf-8", "replace")

    def command(self, line: str, timeout: float = MONITOR_COMMAND_TIMEOUT) -> str:
        """Send one HMP command and return its reply text (the echoed command line included)."""
        if self._sock is None:
            raise ToolError("QEMU monitor is closed")
        if "\n" in line or "\r" in line:
            raise UsageError("one monitor command per call")
        try:
            self._sock.sendall(line.encode() + b"\n")
        except OSError as e:
            raise ToolError(f"QEMU monitor connection failed: {e}") from e
        return self._read_prompt(timeout)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# --- accelerator choice -------------------------------------------------------------------------------

# The probe guest prints this through SYSLINUX's protected-mode core ("Loading kvm-probe-ok... failed").
PROBE_MARKER = b"kvm-probe-ok"
# A working KVM reaches the marker in about a second; QEMU start-up under KVM takes up to 4 s on slow hosts.
PROBE_TIMEOUT = 10.0
# QEMU prints this and stops the VM when KVM cannot run the guest's code: fail the probe at once.
KVM_INTERNAL_ERROR = "KVM internal error"
# Probe disk: 4 MiB, one FAT12 partition at 1 MiB, big enough for ldlinux.sys/ldlinux.c32.
PROBE_DISK_SIZE = 4 << 20
PROBE_PART_START = 2048  # sectors
PROBE_FAT_KIB = 3072
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
# Boot code bytes of an MBR: the disk signature and partition table follow.
MBR_CODE_SIZE = 440
# Each probe build step is a tiny local operation; 30 s means the tool is stuck.
PROBE_TOOL_TIMEOUT = 30.0
PROBE_PREFIX = "euca2kvm-probe-"  # its work directory in the system temporary directory


def _run_tool(argv: list[str], timeout: float = PROBE_TOOL_TIMEOUT, stdin: bytes | None = None) -> None:
    procs.run(argv, timeout=timeout, stdin=stdin)


def write_syslinux_mbr(disk: Path) -> None:
    """SYSLINUX's MBR boot code over the first 440 bytes of ``disk`` (the partition table stays)."""
    try:
        mbr = SYSLINUX_MBR.read_bytes()[:MBR_CODE_SIZE]
    except OSError as e:
        raise ToolError(f"{SYSLINUX_MBR} missing (Debian package syslinux-common): {e}") from e
    with open(disk, "r+b") as f:
        f.write(mbr)


def build_probe_disk(out: Path) -> Path:
    """Write the SYSLINUX probe disk to ``out`` (needs syslinux, mtools, dosfstools, fdisk)."""
    with open(out, "wb") as f:
        f.truncate(PROBE_DISK_SIZE)
    offset = PROBE_PART_START * 512
    table = f"label: dos\nstart={PROBE_PART_START}, type=1, bootable\n".encode()
    _run_tool(["sfdisk", "-q", str(out)], stdin=table)
    write_syslinux_mbr(out)
    _run_tool(["mkfs.fat", "-F", "12", "--invariant", "-n", "PROBE", "--offset", str(PROBE_PART_START),
               str(out), str(PROBE_FAT_KIB)])
    _run_tool(["syslinux", "--install", "--offset", str(offset), str(out)])
    cfg = out.with_name(out.name + ".cfg")
    cfg.write_text(f"SERIAL 0 115200\nPROMPT 0\nTIMEOUT 0\nDEFAULT {PROBE_MARKER.decode()}\n")
    try:
        _run_tool(["mcopy", "-o", "-i", f"{out}@@{offset}", str(cfg), "::syslinux.cfg"])
    finally:
        cfg.unlink(missing_ok=True)
    return out


def probe_guest_runs(accel: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Boot the probe disk under ``accel``; True if the guest reached SYSLINUX's protected-mode core."""
    if accel not in ACCELERATORS:
        raise UsageError(f"unknown accelerator {accel!r} (expected one of {', '.join(ACCELERATORS)})")
    with private_tmp(PROBE_PREFIX) as work:  # removed at exit; a killed run's is removed by the next one
        disk = build_probe_disk(work / "probe.img")
        serial = work / "serial.log"
        args = [
            "-accel", accel, "-machine", "pc", "-m", "64", "-smp", "1", "-nodefaults", "-display", "none",
            "-no-reboot", "-nic", "none", "-serial", f"file:{serial}",
            "-blockdev", blockdev_json(disk, "raw"), "-device", "virtio-blk-pci,drive=disk0,bootindex=0",
        ]
        with QemuProcess(args, work / "qemu.log") as proc:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    if PROBE_MARKER in serial.read_bytes()[: 1 << 16]:
                        return True
                except FileNotFoundError:
                    pass
                if not proc.alive() or KVM_INTERNAL_ERROR in proc.output_tail():
                    break
                time.sleep(0.1)
            tail = proc.output_tail()
            why = KVM_INTERNAL_ERROR if KVM_INTERNAL_ERROR in tail else "no output from the probe guest"
            log.info("accelerator %s failed the probe (%s)", accel, why)
            return False


def blockdev_json(path: Path, fmt: str, node: str = "disk0") -> str:
    """A read-only ``-blockdev`` in JSON form: any file name is safe (no comma escaping, no ``json:`` tricks)."""
    file_node = {"driver": "file", "filename": str(path), "read-only": True}
    return json.dumps({"driver": fmt, "node-name": node, "read-only": True, "file": file_node})



@functools.cache
def _probed_accel() -> str:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    try:
        ok = probe_guest_runs("kvm")
    except ToolError as e:
        log.info("KVM probe could not run (%s); using TCG", e)
        return "tcg"
    return "kvm" if ok else "tcg"


def accelerator() -> str:
    """``tcg`` or ``kvm``: the environment override, else the cached probe result."""
    forced = os.environ.get(ACCEL_ENV, "").strip().lower()
    if forced:
        if forced not in ACCELERATORS:
            raise UsageError(f"{ACCEL_ENV}={forced!r}: expected one of {', '.join(ACCELERATORS)}")
        return forced
    return _probed_accel()
