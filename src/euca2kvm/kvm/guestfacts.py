# SPDX-License-Identifier: Apache-2.0
"""What the SSH proof asks a guest and how it reads the answer: a fixed read-only fact script (hostname,
interface MACs, ``cloud-init status --wait --long``, instance id, datasource, host keys) and its parser;
OpenSSH public-key lines and fingerprints.

Everything here reads text a guest sent: sizes are bounded by the caller and nothing becomes a path.
Control characters in it are escaped where every human-readable line is, by the CLI's output layer
(``euca2kvm.cli.console.visible``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from typing import Any

# Markers between the fact script's sections.
SECTION = "@@euca2kvm:"


def fact_script(wait: int) -> str:
    """The shell script run in the guest; ``cloud-init status --wait`` is cut short after ``wait`` seconds."""
    return f"""
echo {SECTION}hostname; hostname
echo {SECTION}interfaces
for d in /sys/class/net/*; do n=${{d##*/}}; [ "$n" = lo ] && continue
  echo "$n $(cat "$d/address" 2>/dev/null) $(cat "$d/operstate" 2>/dev/null)"; done
echo {SECTION}cloud-init
if command -v cloud-init >/dev/null; then timeout {wait} cloud-init status --wait --long 2>&1; else echo absent; fi
echo {SECTION}instance-id; cat /var/lib/cloud/data/instance-id 2>/dev/null
echo {SECTION}result; head -c 4096 /run/cloud-init/result.json 2>/dev/null
echo {SECTION}host-keys; cat /etc/ssh/ssh_host_*_key.pub 2>/dev/null
echo {SECTION}end
"""


def fingerprint(key_b64: str) -> str:
    """OpenSSH's ``SHA256:`` fingerprint of a public key blob given in base64."""
    blob = base64.b64decode(key_b64, validate=True)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


_B64 = set(string.ascii_letters + string.digits + "+/=")


def parse_public_keys(text: str) -> list[tuple[str, str]]:
    """(type, base64) of each public key line (``.pub`` files or known_hosts lines), others ignored."""
    keys = []
    for line in text.splitlines():
        words = line.split()
        for i, w in enumerate(words[:-1]):
            b64 = words[i + 1]
            if (w.startswith(("ssh-", "ecdsa-")) and len(b64) > 16 and set(b64) <= _B64):
                try:
                    base64.b64decode(b64, validate=True)
                except ValueError:
                    continue
                keys.append((w, b64))
                break
    return keys


@dataclass
class GuestFacts:
    """What the fact script found in the guest."""

    hostname: str | None = None
    interfaces: list[dict[str, str]] = field(default_factory=list)
    cloud_init_status: str | None = None
    cloud_init_detail: str | None = None
    cloud_init_long: str = ""
    instance_id: str | None = None
    datasource: str | None = None
    host_keys: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, output: str) -> GuestFacts:
        sections: dict[str, list[str]] = {}
        current: list[str] | None = None
        for line in output.splitlines():
            if line.startswith(SECTION):
                current = sections.setdefault(line[len(SECTION):].strip(), [])
            elif current is not None:
                current.append(line)
        f = cls()
        f.hostname = next((ln.strip() for ln in sections.get("hostname", []) if ln.strip()), None)
        for ln in sections.get("interfaces", []):
            words = ln.split()
            if len(words) >= 2:
                f.interfaces.append({"name": words[0], "mac": words[1].lower(),
                                     "state": words[2] if len(words) > 2 else ""})
        ci = sections.get("cloud-init", [])
        f.cloud_init_long = "\n".join(ci).strip()
        for i, ln in enumerate(ci):
            key, _, value = ln.partition(":")
            if key.strip() == "status" and f.cloud_init_status is None:
                f.cloud_init_status = value.strip()
            elif key.strip() == "detail" and f.cloud_init_detail is None:
                # cloud-init 22.4 prints the detail on the line after "detail:"
                f.cloud_init_detail = value.strip() or (ci[i + 1].strip() if i + 1 < len(ci) else "") or None
        if f.cloud_init_status is None and ci and ci[0].strip() == "absent":
            f.cloud_init_status = "not installed"
        f.instance_id = next((ln.strip() for ln in sections.get("instance-id", []) if ln.strip()), None)
        try:
            result = json.loads("\n".join(sections.get("result", [])) or "null")
        except ValueError:
            result = None
        ds = None
        if isinstance(result, dict) and isinstance(result.get("v1"), dict):
            ds = result["v1"].get("datasource")
        if not isinstance(ds, str):
            ds = f.cloud_init_detail or ""
        m = re.search(r"DataSource(\w+)", ds)
        f.datasource = m.group(1) if m else None
        f.host_keys = [{"type": t, "fingerprint": fingerprint(b)}
                       for t, b in parse_public_keys("\n".join(sections.get("host-keys", [])))]
        return f

    def as_json(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "interfaces": self.interfaces, "cloud_init_status": self.cloud_init_status,
                "cloud_init_detail": self.cloud_init_detail, "instance_id": self.instance_id,
                "datasource": self.datasource, "host_keys": self.host_keys}
