# SPDX-License-Identifier: Apache-2.0
"""EC2 endpoint and access keys, found the way euca2ools finds them.

Sources, first match wins (the access key and its secret always come from the same source):

1. command-line flags (``--url``, ``--access-key-id``, ``--secret-key``, ``--security-token``);
2. an explicit ``eucarc`` file (the one ``euca_conf --get-credentials`` / ``euare-*`` write):
   ``EC2_URL``, ``EC2_ACCESS_KEY``/``AWS_ACCESS_KEY``/``AWS_ACCESS_KEY_ID``, the matching
   ``*_SECRET_KEY``, or ``AWS_CREDENTIAL_FILE`` pointing at an ``iamrc``;
3. the environment: ``EC2_URL``; ``AWS_ACCESS_KEY_ID``/``AWS_ACCESS_KEY``/``EC2_ACCESS_KEY`` with
   ``AWS_SECRET_ACCESS_KEY``/``AWS_SECRET_KEY``/``EC2_SECRET_KEY``; ``AWS_SESSION_TOKEN``/
   ``AWS_SECURITY_TOKEN``; ``AWS_CREDENTIAL_FILE`` (``AWSAccessKeyId=``/``AWSSecretKey=`` lines).

The eucarc is parsed, never executed: only ``NAME=value`` / ``export NAME=value`` lines count,
``${EUCA_KEY_DIR}`` is the file's directory, and command substitutions are ignored.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import UsageError
from ..safefs import read_prefix

DEFAULT_REGION = "eucalyptus"  # Eucalyptus's own region name; SigV4 needs one
DEFAULT_API_PORT = 8773  # the CLC's web services port
DEFAULT_API_PATH = "/services/compute"  # Compute.getServicePath in 4.x
MAX_RC_BYTES = 1 << 20  # an eucarc is a few hundred bytes; refuse anything absurd

ACCESS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY", "EC2_ACCESS_KEY")
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY", "EC2_SECRET_KEY")
TOKEN_VARS = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
REGION_VARS = ("AWS_DEFAULT_REGION", "AWS_REGION")

_ASSIGN = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    endpoint: str | None = None
    region: str = DEFAULT_REGION
    source: str = ""  # where the keys came from, for messages (never the secret itself)


def _read_small(path: str, what: str) -> str:
    data = read_prefix(path, MAX_RC_BYTES)
    if len(data) > MAX_RC_BYTES:
        raise UsageError(f"{what} {path} is larger than {MAX_RC_BYTES} bytes")
    return data.decode("utf-8", errors="replace")


def parse_eucarc(path: str) -> dict[str, str]:
    """The variables an eucarc assigns (statically: nothing is executed)."""
    text = _read_small(path, "eucarc")
    values: dict[str, str] = {"EUCA_KEY_DIR": os.path.dirname(os.path.abspath(path))}

    def expand(m: re.Match[str]) -> str:
        return values.get(m.group(1) or m.group(2), "")

    for raw in text.splitlines():
        line = raw.strip()
        m = _ASSIGN.match(line)
        if not m or m.group(1) == "EUCA_KEY_DIR":
            continue
        name, rhs = m.group(1), m.group(2).strip()
        if "$(" in rhs or "`" in rhs:
            continue  # command substitution: never run
        try:
            words = shlex.split(rhs, comments=True)
        except ValueError:
            continue
        if len(words) > 1:
            continue
        value = words[0] if words else ""
        if not rhs.startswith("'"):
            value = _VAR.sub(expand, value)
        values[name] = value
    del values["EUCA_KEY_DIR"]
    return values


def parse_credential_file(path: str) -> dict[str, str]:
    """An ``AWS_CREDENTIAL_FILE``/iamrc: ``AWSAccessKeyId=...`` and ``AWSSecretKey=...`` lines."""
    out: dict[str, str] = {}
    for raw in _read_small(path, "credential file").splitlines():
        key, sep, value = raw.strip().partition("=")
        if sep and key.strip() in ("AWSAccessKeyId", "AWSSecretKey", "AWSSecurityToken"):
            out[key.strip()] = value.strip().strip("'\"")
    return out


def normalize_endpoint(url: str) -> str:
    """Validate an EC2 endpoint; a bare ``host[:port]`` means ``http://host:8773/services/compute``."""
    url = url.strip()
    if "://" not in url:
        host = url.rstrip("/")
        if not host or "/" in host:
            raise UsageError(f"bad EC2 endpoint {url!r}: expected http(s)://HOST:PORT/services/compute")
        if ":" not in host:
            host = f"{host}:{DEFAULT_API_PORT}"
        url = f"http://{host}{DEFAULT_API_PATH}"
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as e:
        raise UsageError(f"bad EC2 endpoint {url!r}: {e}") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"bad EC2 endpoint {url!r}: expected http(s)://HOST:PORT/services/compute")
    if parts.username or parts.password:
        raise UsageError("EC2 endpoint URLs must not carry credentials; use --access-key-id/--secret-key")
    return url


def _first(values: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for n in names:
        v = values.get(n)
        if v:
            return v
    return None


def _keys_from(values: Mapping[str, str], label: str) -> tuple[str, str, str | None, str] | None:
    """(access, secret, token, source) from one variable set, following AWS_CREDENTIAL_FILE."""
    access = _first(values, ACCESS_VARS)
    if access is not None:
        secret = _first(values, SECRET_VARS)
        if secret is None:
            raise UsageError(f"{label} sets an access key but no secret key ({'/'.join(SECRET_VARS)})")
        return access, secret, _first(values, TOKEN_VARS), label
    cred_file = values.get("AWS_CREDENTIAL_FILE")
    if cred_file:
        cf = parse_credential_file(cred_file)
        if cf.get("AWSAccessKeyId") and cf.get("AWSSecretKey"):
            token = cf.get("AWSSecurityToken")
            return cf["AWSAccessKeyId"], cf["AWSSecretKey"], token, f"{label} -> {cred_file}"
        raise UsageError(f"credential file {cred_file} (from {label}) lacks AWSAccessKeyId/AWSSecretKey")
    return None


def resolve_credentials(
    *,
    url: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    security_token: str | None = None,
    region: str | None = None,
    eucarc: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Credentials:
    """Combine flags, an explicit eucarc and the environment (in that order of precedence)."""
    environ = os.environ if env is None else env
    rc = parse_eucarc(eucarc) if eucarc else {}
    keys: tuple[str, str, str | None, str] | None = None
    if access_key or secret_key:
        if not (access_key and secret_key):
            raise UsageError("--access-key-id and --secret-key must be given together")
        keys = (access_key, secret_key, security_token, "command line")
    if keys is None and eucarc:
        keys = _keys_from(rc, f"eucarc {eucarc}")
    if keys is None:
        keys = _keys_from(environ, "environment")
    if keys is None:
        raise UsageError(
            "no EC2 credentials: pass --access-key-id/--secret-key or --eucarc FILE, or set "
            f"{ACCESS_VARS[0]}/{SECRET_VARS[0]} (or EC2_ACCESS_KEY/EC2_SECRET_KEY, AWS_CREDENTIAL_FILE)"
        )
    endpoint = url or rc.get("EC2_URL") or environ.get("EC2_URL") or None
    return Credentials(
        access_key=keys[0],
        secret_key=keys[1],
        session_token=security_token or keys[2],
        endpoint=normalize_endpoint(endpoint) if endpoint else None,
        region=region or _first(rc, REGION_VARS) or _first(environ, REGION_VARS) or DEFAULT_REGION,
        source=keys[3],
    )
