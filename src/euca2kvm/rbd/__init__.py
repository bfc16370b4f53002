# SPDX-License-Identifier: Apache-2.0
"""Ceph RBD images (Eucalyptus' ``ceph-rbd`` backend) read strictly read-only, as block sources."""
