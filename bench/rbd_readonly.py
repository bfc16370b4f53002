#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The cluster's state before and after every read-only euca2kvm command on RBD, for a report:

    python bench/rbd_readonly.py

Starts the tests' single-node cluster (tests/rbd/cluster.py: one mon, one memstore OSD on 127.0.0.1),
fills it as the tests do (volumes, ``sp-for``/``sp-on`` snapshot clones, a volume from a snapshot
written inside and beyond the parent overlap, a ``del…`` parent, a large sparse volume, a volume with
a watcher), takes its state (``rbd ls -l``, ``info``, ``snap ls``, ``diff`` and the sha256 of ``rbd
export`` of every image, every RADOS object's size, mtime and version), runs ``scan``, ``inspect`` of
every image, ``export --all`` to raw and to qcow2 and ``verify`` with the read-only key, takes the
state again and prints whether it is the same and whether each raw image equals ``rbd export``'s
bytes. The suite checks the same around every test (tests/rbd/conftest.py); this prints it. Root.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src"), str(ROOT / "tests")]

from tests.rbd import cluster as cc  # noqa: E402


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="euca2kvm-rbd-readonly-"))
    c = cc.start(base)
    r = None
    try:
        cc.fill(c)
        r = cc._Rados(c)
        before = cc.state(c, r)
        ceph = c.cli_args(ro=True)
        out = base / "out"
        images = sorted(k for k in before if k not in ("ls", "objects"))

        def run(*argv: str) -> None:
            p = subprocess.run([sys.executable, "-m", "euca2kvm", *argv], capture_output=True, text=True, timeout=600)
            print(f"euca2kvm {' '.join(a for a in argv if a not in ceph)}: exit {p.returncode}")

        run("scan", "rbd:rbd", *ceph, "--json")
        for name in images:
            if not name.startswith("del"):
                run("inspect", name, "-s", "rbd:rbd", *ceph)
        run("export", "--all", "-s", "rbd:rbd", *ceph, "-o", str(out), "--force")
        run("export", "--all", "-s", "rbd:rbd", *ceph, "-o", str(base / "qcow2"), "-f", "qcow2", "--force")
        run("verify", str(out))
        after = cc.state(c, r)
        objects = before["objects"]
        assert isinstance(objects, dict)
        print(f"{len(images)} images, {len(objects)} RADOS objects ({sum(v[0] for v in objects.values())} bytes)")
        print(f"state the same after as before: {after == before}; every object's (size, mtime, version) the "
              f"same: {after['objects'] == objects}")
        for name in images:
            entry = before[name]
            assert isinstance(entry, dict)
            raw = out / f"{name}.raw"
            same = hashlib.sha256(raw.read_bytes()).hexdigest() == entry["export"] if raw.exists() else None
            print(f"  {name}: rbd export sha256 {entry['export'][:16]}.., euca2kvm's raw the same: "
                  f"{'not exported (a deleted image)' if same is None else same}, snapshots {len(entry['snaps'])}, "
                  f"allocated extents {len(entry['diff'])}")
        return 0 if after == before else 1
    finally:
        if r is not None:
            r.close()
        cc.stop(c)
        subprocess.run(["rm", "-rf", str(base)], check=False)


if __name__ == "__main__":
    sys.exit(main())
