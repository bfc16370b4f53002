# SPDX-License-Identifier: Apache-2.0
"""A FIFO that tells whether anything opened it.

A thread blocks opening the FIFO for writing; that open returns only once some process opens it
for reading. So ``opened`` is true exactly when a reader (qemu, the digest, anything) opened the
file the test planted, and a reader never hangs on it either (the writer is already waiting).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

SETTLE = 0.2  # seconds for the writer thread to be blocked in open() before the test goes on
JOIN_TIMEOUT = 10.0


class FifoTrap:
    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._wait, name=f"fifotrap-{path.name}", daemon=True)
        self._thread.start()
        time.sleep(SETTLE)

    def _wait(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)
        self._opened.set()
        os.close(fd)

    @property
    def opened(self) -> bool:
        return self._opened.is_set()

    def close(self) -> bool:
        """Release the writer; returns whether anything had opened the FIFO before."""
        was = self.opened
        if not was:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            self._thread.join(JOIN_TIMEOUT)
            os.close(fd)
        self._thread.join(JOIN_TIMEOUT)
        return was
