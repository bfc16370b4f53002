# SPDX-License-Identifier: Apache-2.0
"""An instance's identity as the cloud recorded it: MAC, addresses, DNS names, key, user-data.

Shared by the database and API readers so both normalise the same way. Nothing here derives a
value the cloud did not store (no MAC from an address, no key from a name); what a source cannot
give is listed in ``Instance.unavailable`` instead. Every value is bounded and checked, since it
ends up in a domain XML, a seed image and a terminal.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from typing import Any

# VmNetworkConfig.DEFAULT_IP: what Eucalyptus stores while an instance has no address.
NO_ADDRESS = "0.0.0.0"
# EC2 caps user-data at 16 KiB (base64 ~22 KiB); anything far beyond is not a real record.
MAX_USER_DATA = 1 << 20
# An OpenSSH RSA-16384 public key line is ~2.8 KiB; longer is not a key.
MAX_PUBLIC_KEY = 16 << 10
MAX_NAME = 255  # DNS names and key names (EC2 key names are at most 255 characters)
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
# KeyPairs.getAuthKeyString writes "ssh-rsa <b64> <account>@eucalyptus.<keyName>" and
# VmBootRecord.getSshKeyPair reads the name back with replaceAll(".*@eucalyptus\\.", "").
_EUCA_KEY_COMMENT = re.compile(r"@eucalyptus\.(?P<name>[^\s]+)$")
_KEY_LINE = re.compile(r"^(ssh-(rsa|dss|ed25519)|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+( .*)?$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def mac(value: Any) -> str | None:
    """``d0:0d:4a:1b:2c:3d`` (lower case), or None for anything that is not a MAC address."""
    if not isinstance(value, str) or not _MAC_RE.match(value.strip()):
        return None
    return value.strip().lower()


def address(value: Any) -> str | None:
    """An IPv4/IPv6 address, or None (also for Eucalyptus's 0.0.0.0 placeholder)."""
    if not isinstance(value, str) or value.strip() in ("", NO_ADDRESS):
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def dns_name(value: Any) -> str | None:
    if not isinstance(value, str) or not _DNS_RE.match(value.strip()):
        return None
    return value.strip().rstrip(".").lower()


def public_key(value: Any) -> str | None:
    """One OpenSSH public key line, or None (multi-line, control characters, oversized, no key)."""
    if not isinstance(value, str):
        return None
    line = value.strip()
    if not line or len(line) > MAX_PUBLIC_KEY or _CONTROL.search(line) or not _KEY_LINE.match(line):
        return None
    return line


def key_name_from_key(key: str | None) -> str | None:
    """The key pair's name from the comment Eucalyptus writes into every key it stores."""
    if key is None:
        return None
    m = _EUCA_KEY_COMMENT.search(key)
    return key_name(m.group("name")) if m else None


def key_name(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME or _CONTROL.search(value):
        return None
    return value.strip()


def user_data_b64(value: Any) -> str | None:
    """User-data as base64 text: raw bytes (a bytea column) are encoded, base64 text is checked."""
    if value is None:
        return None
    if isinstance(value, memoryview):
        value = bytes(value)
    if isinstance(value, bytes):
        if not value or len(value) > MAX_USER_DATA:
            return None
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, str):
        text = value.strip()
        if not text or len(text) > MAX_USER_DATA * 4 // 3 + 4:
            return None
        try:
            base64.b64decode(text, validate=True)
        except ValueError:
            return None
        return text
    return None


def decode_user_data(b64: str) -> bytes:
    """The stored user-data bytes (``b64`` as recorded in an inventory); ValueError if not base64."""
    return base64.b64decode(b64, validate=True)


# metadata_instances columns of an instance's identity -> inventory field. Sources (Eucalyptus 4.x,
# clc/modules/compute-common/.../internal/vm/ from 4.2 on, cluster-manager/.../vm/ before): the embedded
# VmNetworkConfig (mac, addresses, DNS names), VmBootRecord (sshkey: the public key line, whose
# "<account>@eucalyptus.<name>" comment carries the key name; user_data: bytea) and VmRuntimeState
# (service_tag: the NC). There is no key-name column.
DB_COLUMNS = {
    "metadata_vm_mac_address": "mac", "metadata_vm_private_address": "private_ip",
    "metadata_vm_public_address": "public_ip", "metadata_vm_private_dns": "private_dns",
    "metadata_vm_public_dns": "public_dns", "metadata_vm_sshkey": "public_key",
    "metadata_vm_user_data": "user_data", "metadata_vm_service_tag": "node",
}


def from_db_row(r: dict[str, Any], absent: set[str]) -> dict[str, Any]:
    """Instance fields from a metadata_instances row; ``absent``: identity columns this release lacks."""
    key = public_key(r["metadata_vm_sshkey"])
    out: dict[str, Any] = {
        "mac": mac(r["metadata_vm_mac_address"]),
        "private_ip": address(r["metadata_vm_private_address"]),
        "public_ip": address(r["metadata_vm_public_address"]),
        "private_dns": dns_name(r["metadata_vm_private_dns"]),
        "public_dns": dns_name(r["metadata_vm_public_dns"]),
        "public_key": key,
        "key_name": key_name_from_key(key),
        "user_data": user_data_b64(r["metadata_vm_user_data"]),
        "node": _text(r["metadata_vm_service_tag"]),
    }
    unavailable = {DB_COLUMNS[c] for c in absent if c in DB_COLUMNS}
    if "public_key" in unavailable or key is not None and out["key_name"] is None:
        unavailable.add("key_name")  # only the key's comment names it
    out["unavailable"] = sorted(unavailable)
    return out


def _text(value: Any) -> str | None:
    if value is None or _CONTROL.search(str(value)) or not str(value).strip() or len(str(value)) > 4096:
        return None
    return str(value).strip()


def hostname(private_dns: str | None, instance_id: str) -> str:
    """The guest's host name: the first label of its private DNS name, else the instance id."""
    if private_dns:
        first = private_dns.split(".", 1)[0]
        if first:
            return first
    return re.sub(r"[^A-Za-z0-9-]", "-", instance_id)[:63].strip("-") or "instance"
