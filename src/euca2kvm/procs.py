# SPDX-License-Identifier: Apache-2.0
"""External processes must not outlive euca2kvm.

A long ``qemu-img convert`` left running after euca2kvm was killed would keep reading (and
holding) the source and writing a partial file. The kernel can kill a child when its parent
dies (PR_SET_PDEATHSIG); ``setpriv`` from util-linux sets it and then execs the command, which
keeps it across exec. Where ``setpriv`` is missing the command runs as is.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Sequence


@functools.lru_cache(maxsize=1)
def _setpriv() -> str | None:
    return shutil.which("setpriv")


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped so the process gets SIGKILL when its parent process dies."""
    sp = _setpriv()
    if sp is None or shutil.which(argv[0]) is None:
        return list(argv)  # a missing program must still fail as OSError at Popen, with its own name
    return [sp, "--pdeathsig", "KILL", "--", *argv]
