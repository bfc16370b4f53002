# SPDX-License-Identifier: Apache-2.0
"""The migration report: manifests (and plans) as one self-contained HTML page or Markdown.

:mod:`.model` reads and confines what the manifests name; :mod:`.render` fills the Jinja2
templates in ``templates/``. Sits above ``export``, ``kvm`` and ``eucalyptus``, below ``cli``.
"""
