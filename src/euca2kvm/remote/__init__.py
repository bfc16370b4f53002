# SPDX-License-Identifier: Apache-2.0
"""Sources on another host, read over SSH: nothing installed on it, nothing written to it."""
