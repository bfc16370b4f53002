# SPDX-License-Identifier: Apache-2.0
"""Whole-instance plans: Eucalyptus metadata (``eucalyptus/``) joined with what the data path can
export (``export/``) and the guest's hardware (``kvm/``). A layer of its own on top of the three,
so that ``eucalyptus/`` stays a source of names and metadata only."""
