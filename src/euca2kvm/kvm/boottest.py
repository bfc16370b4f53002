# SPDX-License-Identifier: Apache-2.0
"""Boot a disk image in QEMU, read-only and offline, and report how far it got.

:func:`boot_test` attaches the image read-only (``-blockdev`` with ``read-only``), without network, with the
serial port in a file and an HMP monitor on a unix socket. While the guest runs it polls the serial log and
the VGA text buffer (``pmemsave`` of physical 0xB8000) and records when each :class:`Stage` was first seen.
It stops on the expected text, a login prompt (when nothing else is expected), a guest power-off, a firmware
"No bootable device", or the timeout, whichever comes first, then takes a final ``screendump`` PNG. It never
runs longer than ``timeout`` plus a few seconds of clean-up.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from euca2kvm.errors import ToolError, UsageError
from euca2kvm.kvm.qemu import (
    KVM_INTERNAL_ERROR,
    HmpMonitor,
    QemuProcess,
    accelerator,
    blockdev_json,
    hmp_quote,
)
from euca2kvm.safefs import private_tmp

log = logging.getLogger(__name__)

# Image formats QEMU opens for a guest disk (what euca2kvm export writes).
FORMATS = ("raw", "qcow2", "vmdk", "vhdx", "vpc", "vdi")
BUSES = ("virtio", "ide")

# VGA text mode: 80x25 cells of (character, attribute) at physical 0xB8000.
VGA_TEXT_ADDR = 0xB8000
VGA_COLS = 80
VGA_ROWS = 25
VGA_TEXT_BYTES = VGA_COLS * VGA_ROWS * 2
# Poll period: TCG boots the test disk in ~3 s; 0.25 s keeps stage timings useful at negligible cost.
POLL_INTERVAL = 0.25
# Serial output kept and scanned; a chatty guest cannot make us hold more than this.
SERIAL_LIMIT = 4 << 20
# Time allowed for the final screendump and VGA read after the guest stopped or timed out.
FINAL_CAPTURE_TIMEOUT = 2.0
# Guest RAM: enough for a cloud kernel with a small initrd, a GRUB or memtest image.
DEFAULT_MEMORY_MIB = 512
DEFAULT_TIMEOUT = 60.0
# The QEMU monitor socket's directory, short (unix socket paths are limited to 108 bytes) and private.
MONITOR_PREFIX = "euca2kvm-mon-"


class Stage(enum.IntEnum):
    """How far a boot got, in order."""

    NONE = 0
    FIRMWARE = 1
    BOOTLOADER = 2
    KERNEL = 3
    LOGIN = 4
    EXPECTED = 5


# Evidence for each stage, searched in the serial log and the VGA text screen.
STAGE_PATTERNS: dict[Stage, re.Pattern[str]] = {
    Stage.FIRMWARE: re.compile(r"SeaBIOS|Booting from (Hard Disk|ROM|DVD|Floppy)|iPXE \(http|Press ESC for boot"),
    Stage.BOOTLOADER: re.compile(r"GNU GRUB|GRUB loading|Welcome to GRUB|grub rescue>|(SYS|ISO|EXT|PXE)LINUX \d"),
    Stage.KERNEL: re.compile(r"Linux version \d|Decompressing Linux|Booting the kernel|Run /init|"
                             r"\[\s*\d+\.\d{6}\] "),
    Stage.LOGIN: re.compile(r"(?m)login: ?$"),
}
# Messages that explain why a boot stopped; all distinct ones seen are reported, in order.
FAILURE_PATTERNS = re.compile(
    r"No bootable device|Boot failed: [^\n]*|Kernel panic[^\n]*|BOOT-FAIL[^\n]*|Missing operating system|"
    r"Operating system not found|error: [^\n]*|KVM internal error[^\n]*|Could not find kernel image[^\n]*"
)
# Distinct failure messages kept (a looping guest could print many).
MAX_FAILURES = 8
# Failures after which nothing else can happen without a reboot: stop early instead of waiting.
TERMINAL_FAILURES = re.compile(r"No bootable device|Kernel panic")


@dataclass
class BootResult:
    """What a boot test saw. ``stage`` is the furthest stage reached (EXPECTED if the text appeared)."""

    image: Path
    fmt: str
    accel: str
    stage: Stage
    reason: str
    elapsed: float
    milestones: dict[Stage, float] = field(default_factory=dict)
    failure: str | None = None
    serial: str = ""
    vga_text: str = ""
    screenshot: Path | None = None
    qemu_status: int | None = None
    expect: str | None = None

    @property
    def ok(self) -> bool:
        """The expected text appeared; without an expectation, a login prompt appeared."""
        return self.stage >= (Stage.EXPECTED if self.expect is not None else Stage.LOGIN)

    def summary(self) -> str:
        times = ", ".join(f"{s.name.lower()} {t:.2f}s" for s, t in sorted(self.milestones.items()))
        text = f"{self.image.name} ({self.fmt}, {self.accel}): {self.stage.name.lower()} in {self.elapsed:.2f}s"
        text += f" [{self.reason}]"
        if self.failure:
            text += f", failure: {self.failure}"
        if times:
            text += f"; seen: {times}"
        return text


def decode_vga_text(raw: bytes) -> str:
    """Render an 80x25 VGA text buffer (character/attribute pairs) as lines, unprintables as spaces."""
    chars = bytes(b if 32 <= b < 127 else 32 for b in raw[0:VGA_TEXT_BYTES:2])
    rows = [chars[r * VGA_COLS : (r + 1) * VGA_COLS].decode("ascii").rstrip() for r in range(VGA_ROWS)]
    return "\n".join(rows).rstrip("\n")


def read_serial(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(SERIAL_LIMIT)
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise ToolError(f"cannot read the serial log {path}: {e}") from e
    return data.decode("utf-8", "replace").replace("\r", "")


def _qemu_args(image: Path, fmt: str, accel: str, memory_mib: int, bus: str, serial: Path, sock: Path) -> list[str]:
    device = "virtio-blk-pci,drive=disk0,bootindex=0" if bus == "virtio" else "ide-hd,drive=disk0,bootindex=0"
    return [
        "-accel", accel, "-machine", "pc", "-m", str(memory_mib), "-smp", "1",
        "-nodefaults", "-vga", "std", "-display", "none",
        "-nic", "none",
        "-no-reboot", "-no-shutdown",  # a power-off or reboot pauses the guest so the screen can still be read
        "-boot", "strict=on",  # only the image: "No bootable device" as soon as it fails
        "-serial", f"file:{serial}",
        "-monitor", f"unix:{sock},server=on,wait=off",
        "-blockdev", blockdev_json(image, fmt),
        "-device", device,
    ]


class _Watcher:
    """Accumulates stage evidence from successive serial and VGA snapshots."""

    def __init__(self, expect: str | None, start: float) -> None:
        self.expect = expect
        self.start = start
        self.milestones: dict[Stage, float] = {}
        self.failures: list[str] = []
        self.terminal = False
        self.serial = ""
        self.vga = ""

    def update(self, serial: str, vga: str | None) -> None:
        now = time.monotonic() - self.start
        self.serial = serial
        if vga is not None:
            self.vga = vga
        texts = (serial, vga or "")
        for stage, pattern in STAGE_PATTERNS.items():
            if stage not in self.milestones and any(pattern.search(t) for t in texts):
                self.milestones[stage] = now
        if self.expect is not None and Stage.EXPECTED not in self.milestones and any(
            self.expect in t for t in texts
        ):
            self.milestones[Stage.EXPECTED] = now
        for t in texts:
            for m in FAILURE_PATTERNS.finditer(t):
                msg = m.group(0).strip().rstrip(".")
                if msg not in self.failures and len(self.failures) < MAX_FAILURES:
                    self.failures.append(msg)
            if TERMINAL_FAILURES.search(t):
                self.terminal = True

    @property
    def failure(self) -> str | None:
        return "; ".join(self.failures) or None

    @property
    def stage(self) -> Stage:
        return max(self.milestones, default=Stage.NONE)

    def done(self) -> str | None:
        """Why to stop now, or None to keep waiting."""
        if Stage.EXPECTED in self.milestones:
            return "expected text seen"
        if self.expect is None and Stage.LOGIN in self.milestones:
            return "login prompt seen"
        if self.terminal:
            return f"stopped on failure: {self.failure}"
        return None


def _validate(image: Path, fmt: str, timeout: float, bus: str, memory_mib: int) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"unsupported image format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if bus not in BUSES:
        raise UsageError(f"unsupported disk bus {bus!r} (expected one of {', '.join(BUSES)})")
    if not timeout > 0:
        raise UsageError(f"timeout must be positive, not {timeout}")
    if not 16 <= memory_mib <= 65536:
        raise UsageError(f"guest memory {memory_mib} MiB out of range 16..65536")
    if not image.is_file():
        raise UsageError(f"image not found: {image}")


def boot_test(
    image: Path,
    fmt: str = "raw",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    expect: str | None = None,
    workdir: Path,
    memory_mib: int = DEFAULT_MEMORY_MIB,
    bus: str = "virtio",
    accel: str | None = None,
) -> BootResult:
    """Boot ``image`` read-only and report the stage reached; see the module docstring.

    Files written to ``workdir``: ``serial.log``, ``vga.bin``, ``screen.png``, ``qemu.log``.
    """
    image = Path(image).absolute()
    _validate(image, fmt, timeout, bus, memory_mib)
    workdir = Path(workdir).absolute()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create work directory {workdir}: {e}") from e
    chosen = accel or accelerator()
    serial_path, vga_path, png_path = workdir / "serial.log", workdir / "vga.bin", workdir / "screen.png"
    for stale in (serial_path, vga_path, png_path):
        stale.unlink(missing_ok=True)
    # The socket lives in a short private directory: unix socket paths are limited to 108 bytes.
    with private_tmp(MONITOR_PREFIX) as sockdir:  # a killed run's is removed by the next one
        sock = sockdir / "monitor.sock"
        args = _qemu_args(image, fmt, chosen, memory_mib, bus, serial_path, sock)
        start = time.monotonic()
        deadline = start + timeout
        watcher = _Watcher(expect, start)
        reason = "timeout"
        screenshot: Path | None = None
        with QemuProcess(args, workdir / "qemu.log", cwd=workdir) as proc:
            monitor = HmpMonitor(sock, proc, connect_timeout=min(timeout, 10.0))
            try:
                while True:
                    vga = _read_vga(monitor, vga_path)
                    watcher.update(read_serial(serial_path), vga)
                    why = watcher.done()
                    if why is not None:
                        reason = why
                        break
                    if not proc.alive():
                        reason = f"QEMU exited with status {proc.returncode}"
                        break
                    if KVM_INTERNAL_ERROR in proc.output_tail():
                        reason = f"stopped on failure: {KVM_INTERNAL_ERROR}"
                        watcher.failures.append(KVM_INTERNAL_ERROR)
                        break
                    if _guest_stopped(monitor):
                        reason = "guest powered off or rebooted"
                        watcher.update(read_serial(serial_path), _read_vga(monitor, vga_path))
                        break
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))
                elapsed = time.monotonic() - start
                screenshot = _screendump(monitor, png_path)
                watcher.update(read_serial(serial_path), _read_vga(monitor, vga_path))
                _quit(monitor)
            finally:
                monitor.close()
            status = proc.wait(TERMINATE_AFTER_QUIT)
            if status is None:
                status = proc.stop()
    result = BootResult(
        image=image, fmt=fmt, accel=chosen, stage=watcher.stage, reason=reason, elapsed=elapsed,
        milestones=dict(watcher.milestones), failure=watcher.failure, serial=watcher.serial,
        vga_text=watcher.vga, screenshot=screenshot, qemu_status=status, expect=expect,
    )
    log.info("%s", result.summary())
    return result


# QEMU exits within milliseconds of a monitor "quit"; after 1 s it is stopped with signals instead.
TERMINATE_AFTER_QUIT = 1.0


def _read_vga(monitor: HmpMonitor, dump: Path) -> str | None:
    """The VGA text screen now, or None if the monitor could not provide it."""
    try:
        reply = monitor.command(f"pmemsave {VGA_TEXT_ADDR:#x} {VGA_TEXT_BYTES} {hmp_quote(dump)}")
        if "rror" in reply:
            log.debug("pmemsave failed: %s", reply.strip())
            return None
        with open(dump, "rb") as f:
            return decode_vga_text(f.read(VGA_TEXT_BYTES))
    except (ToolError, OSError) as e:
        log.debug("VGA read failed: %s", e)
        return None


def _guest_stopped(monitor: HmpMonitor) -> bool:
    try:
        reply = monitor.command("info status")
    except ToolError:
        return False
    return "shutdown" in reply or "internal-error" in reply or "guest-panicked" in reply


def _screendump(monitor: HmpMonitor, png: Path) -> Path | None:
    try:
        reply = monitor.command(f"screendump {hmp_quote(png)} -f png", timeout=FINAL_CAPTURE_TIMEOUT)
    except ToolError as e:
        log.debug("screendump failed: %s", e)
        return None
    if "rror" in reply or not png.is_file():
        log.debug("screendump failed: %s", reply.strip())
        return None
    return png


def _quit(monitor: HmpMonitor) -> None:
    # "quit" closes the connection without a prompt; the process is reaped by the caller either way.
    with contextlib.suppress(ToolError):
        monitor.command("quit", timeout=TERMINATE_AFTER_QUIT)
