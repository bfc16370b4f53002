# SPDX-License-Identifier: Apache-2.0
"""Fixture generators (not part of the installed package).

``python -m fixturegen.oracle OUTDIR`` builds LVM2 container files with the real lvm2 and the
real kernel device-mapper inside a QEMU TCG guest and records the guest kernel's hashes.
"""
