# SPDX-License-Identifier: Apache-2.0
"""SAN disks in instance plans: a LUN to attach, or an attached one whose size disagrees with the cloud's.

The SAN facts (LUN names, attach hints, the size check) are :mod:`euca2kvm.eucalyptus.san`'s; this
module only turns them into plan blockers and warnings, on the planning layer.
"""

from __future__ import annotations

from ..eucalyptus.inventory import Inventory
from ..eucalyptus.san import KIND, attach_hint, size_problem
from .instances import Blocker, InstancePlan


def check_plans(plans: list[InstancePlan], inv: Inventory, force: bool) -> None:
    """SAN disks of planned instances: a LUN not given with ``--device`` is a blocker saying what to attach;
    a given device whose size disagrees with the cloud's record is a format blocker (exit 3), a larger one
    lifted by ``--force``."""
    for p in plans:
        for disk in p.disks:
            vid = disk.volume_id
            sv = inv.san_volume(vid)
            if disk.volume is None and sv is not None:
                disk.blockers = [b for b in disk.blockers if b.kind != "missing-file"]
                disk.blockers.append(Blocker("missing-file", attach_hint(vid, sv), vid))
            elif disk.volume is not None and disk.volume.kind == KIND:
                problem = size_problem(disk.volume, inv)
                if problem is not None and not (problem[1] and force):
                    disk.blockers.append(Blocker("format", problem[0], vid))
                elif problem is not None:
                    disk.warnings.append(problem[0])
