# SPDX-License-Identifier: Apache-2.0
"""Read the cloud inventory through the EC2 Query API (boto3), as any euca2ools user could.

Calls DescribeInstances, DescribeVolumes, DescribeSnapshots and, when the server implements it,
DescribeInstanceTypes (either the AWS shape or Eucalyptus's own ``instanceTypeDetails``; when it
fails, VM types keep just their name). With ``verbose`` the literal id ``verbose`` is sent as the
instance/volume/snapshot id, which a Eucalyptus cloud administrator uses to list every account's
resources (ComputeService removes it from the id set and drops the owner restriction).

The API does not tell launch-time volumes from runtime attachments: the root device's volume is
reported as ``kind="boot"``, every other as ``"runtime"``. Storage-side facts (volumes dir, VG/LV
names, loop devices) are not visible through the API; :mod:`.db` provides those.

Identity: addresses, DNS names and the key name come from DescribeInstances, the MAC only from its
``networkInterfaceSet`` (absent on Eucalyptus outside VPC mode), user-data from
DescribeInstanceAttribute ``userData`` (one call per instance). The API never returns key material
or the NC: ``public_key`` and ``node`` are always listed in ``unavailable``, with whatever else a
given cloud did not answer.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ToolError, UsageError
from . import identity
from .credentials import Credentials, normalize_endpoint
from .inventory import FORMAT_VERSION, Attachment, Instance, Inventory, Snapshot, VmType, Volume

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10  # seconds: an unreachable CLC fails fast
READ_TIMEOUT = 120  # seconds: a verbose DescribeInstances on a large cloud is slow
MAX_ATTEMPTS = 3  # botocore "standard" retries for throttling / transient 5xx
MAX_PAGES = 10_000  # NextToken loops are bounded even if a server keeps returning tokens
TYPES_PER_CALL = 100  # DescribeInstanceTypes accepts at most 100 names per request
MAX_XML_BYTES = 16 << 20  # Eucalyptus instanceTypeDetails bodies are a few KiB
VERBOSE = "verbose"
_EUCA_TYPES_KEY = "EucalyptusInstanceTypeDetails"
_DISK_RE = re.compile(r"^(?P<base>(?:xvd|vd|sd|hd)[a-z]+)[0-9]*$")


def make_client(endpoint: str, credentials: Credentials, signature_version: str | None = None) -> Any:
    """A boto3 EC2 client for a Eucalyptus endpoint, with bounded timeouts and retries.

    ``signature_version``: None for botocore's SigV4; ``"v2"`` for clouds older than SigV4
    support (euca2ools itself signs EC2 requests with SigV2).
    """
    if signature_version not in (None, "v2", "v4"):
        raise UsageError(f"unknown signature version {signature_version!r} (use v2 or v4)")
    try:
        import boto3
        from botocore.config import Config
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ToolError("reading the EC2 API needs boto3: pip install boto3") from e
    session = boto3.session.Session(
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        aws_session_token=credentials.session_token,
        region_name=credentials.region,
    )
    config = Config(connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                    retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                    user_agent_extra="euca2kvm",
                    **({"signature_version": signature_version} if signature_version else {}))
    client = session.client("ec2", endpoint_url=endpoint, config=config)
    client.meta.events.register("before-parse.ec2.DescribeInstanceTypes", _parse_euca_instance_types)
    return client


def _parse_euca_instance_types(response_dict: dict[str, Any], customized_response_dict: dict[str, Any],
                               **_: Any) -> None:
    """Pick up Eucalyptus's ``instanceTypeDetails`` items (name/cpu/memory/disk) boto3 would drop."""
    body = response_dict.get("body")
    if not isinstance(body, bytes) or len(body) > MAX_XML_BYTES or b"instanceTypeDetails" not in body:
        return
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return
    found: list[dict[str, str | None]] = []
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] != "instanceTypeDetails":
            continue
        for item in el:
            fields = {child.tag.rsplit("}", 1)[-1]: (child.text or "").strip() for child in item}
            found.append({k: fields.get(k) for k in ("name", "cpu", "memory", "disk")})
    customized_response_dict[_EUCA_TYPES_KEY] = found


def _int(v: Any) -> int | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v.strip() else None


def _image_id(v: Any) -> str | None:
    """A kernel/ramdisk image id; some servers send the text "None" or "null" for no image."""
    s = _str(v)
    return None if s is None or s.lower() in ("none", "null") else s


def _call(client: Any, op: str, endpoint: str, **params: Any) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        result = getattr(client, op)(**params)
    except ClientError as e:
        err = e.response.get("Error", {})
        raise ToolError(
            f"EC2 {e.operation_name} at {endpoint} failed: {err.get('Code')}: {err.get('Message')}"
        ) from None
    except BotoCoreError as e:
        raise ToolError(f"EC2 request to {endpoint} failed: {e}") from None
    return result if isinstance(result, dict) else {}


def _pages(call: Callable[..., dict[str, Any]], **params: Any) -> Iterator[dict[str, Any]]:
    token: str | None = None
    for _ in range(MAX_PAGES):
        page = call(**params, **({"NextToken": token} if token else {}))
        yield page
        token = _str(page.get("NextToken"))
        if token is None:
            return
    raise ToolError(f"more than {MAX_PAGES} result pages; giving up")


def _vm_types(client: Any, names: set[str]) -> dict[str, VmType]:
    """Sizes of the named instance types; {} entries missing when the server cannot tell."""
    from botocore.exceptions import BotoCoreError, ClientError

    out: dict[str, VmType] = {}
    ordered = sorted(names)
    for start in range(0, len(ordered), TYPES_PER_CALL):
        chunk = ordered[start:start + TYPES_PER_CALL]
        try:
            resp = client.describe_instance_types(InstanceTypes=chunk)
        except (ClientError, BotoCoreError) as e:
            log.debug("DescribeInstanceTypes unavailable (%s); VM types keep only their names", e)
            return out
        for t in resp.get(_EUCA_TYPES_KEY) or []:
            if t.get("name"):
                out[t["name"]] = VmType(name=t["name"], cpus=_int(t.get("cpu")),
                                        memory_mib=_int(t.get("memory")), disk_gib=_int(t.get("disk")))
        for t in resp.get("InstanceTypes") or []:
            name = _str(t.get("InstanceType"))
            if name is None:
                continue
            out[name] = VmType(name=name, cpus=_int((t.get("VCpuInfo") or {}).get("DefaultVCpus")),
                               memory_mib=_int((t.get("MemoryInfo") or {}).get("SizeInMiB")),
                               disk_gib=_int((t.get("InstanceStorageInfo") or {}).get("TotalSizeInGB")))
    return out


def _short(dev: str | None) -> str | None:
    return dev[5:] if dev and dev.startswith("/dev/") else dev


def _root_index(bdms: list[tuple[str | None, str]], root: str | None) -> int | None:
    """Index of the mapping at the root device: exact match, else the single one on its disk."""
    r = _short(root)
    if r is None:
        return None
    for i, (dev, _) in enumerate(bdms):
        if _short(dev) == r:
            return i
    m = _DISK_RE.match(r)
    if m is None:
        return None
    same = [i for i, (dev, _) in enumerate(bdms) if (d := _DISK_RE.match(_short(dev) or "")) and
            d.group("base") == m.group("base")]
    return same[0] if len(same) == 1 else None


def _instance(raw: dict[str, Any], types: dict[str, VmType]) -> Instance | None:
    iid = _str(raw.get("InstanceId"))
    if iid is None:
        return None
    bdms: list[tuple[str | None, str]] = []
    statuses: list[str | None] = []
    for m in raw.get("BlockDeviceMappings") or []:
        ebs = m.get("Ebs") or {}
        vol = _str(ebs.get("VolumeId"))
        if vol is not None:
            bdms.append((_str(m.get("DeviceName")), vol))
            statuses.append(_str(ebs.get("Status")))
    root = _str(raw.get("RootDeviceName"))
    ri = _root_index(bdms, root) if raw.get("RootDeviceType", "ebs") == "ebs" else None
    atts = [Attachment(volume_id=vol, device=dev, is_root=i == ri, kind="boot" if i == ri else "runtime",
                       status=statuses[i]) for i, (dev, vol) in enumerate(bdms)]
    tname = _str(raw.get("InstanceType"))
    return Instance(
        id=iid, state=_str((raw.get("State") or {}).get("Name")),
        vm_type=None if tname is None else types.get(tname, VmType(name=tname)), root_device=root,
        kernel_id=_image_id(raw.get("KernelId")), ramdisk_id=_image_id(raw.get("RamdiskId")),
        image_id=_str(raw.get("ImageId")), platform=_str(raw.get("Platform")),
        virtualization_type=_str(raw.get("VirtualizationType")), attachments=atts, **_identity(raw))


def _identity(raw: dict[str, Any]) -> dict[str, Any]:
    """Identity fields DescribeInstances gives; the primary interface (device index 0) has the MAC."""
    nics = [n for n in raw.get("NetworkInterfaces") or [] if isinstance(n, dict)]
    nics.sort(key=lambda n: _int((n.get("Attachment") or {}).get("DeviceIndex")) or 0)
    out: dict[str, Any] = {
        "mac": identity.mac(nics[0].get("MacAddress")) if nics else None,
        "private_ip": identity.address(raw.get("PrivateIpAddress")),
        "public_ip": identity.address(raw.get("PublicIpAddress")),
        "private_dns": identity.dns_name(raw.get("PrivateDnsName")),
        "public_dns": identity.dns_name(raw.get("PublicDnsName")),
        "key_name": identity.key_name(raw.get("KeyName")),
    }
    unavailable = {"public_key", "node"}  # never in an EC2 answer
    if not nics:
        unavailable.add("mac")
    out["unavailable"] = sorted(unavailable)
    return out


def _with_user_data(client: Any, inst: Instance) -> Instance:
    """The instance with its user-data (DescribeInstanceAttribute), or ``user_data`` unavailable."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        resp = client.describe_instance_attribute(InstanceId=inst.id, Attribute="userData")
    except (ClientError, BotoCoreError) as e:
        log.debug("DescribeInstanceAttribute userData for %s failed: %s", inst.id, e)
        return dataclasses.replace(inst, unavailable=sorted({*inst.unavailable, "user_data"}))
    value = (resp.get("UserData") or {}).get("Value") if isinstance(resp, dict) else None
    return dataclasses.replace(inst, user_data=identity.user_data_b64(value))


def inventory_from_client(client: Any, endpoint: str, verbose: bool = False) -> Inventory:
    """Build the inventory with an existing EC2 client (see :func:`make_client`)."""
    def call(op: str) -> Callable[..., dict[str, Any]]:
        return lambda **kw: _call(client, op, endpoint, **kw)

    ids = {"InstanceIds": [VERBOSE]} if verbose else {}
    raw_instances = [i for page in _pages(call("describe_instances"), **ids)
                     for r in page.get("Reservations") or [] for i in r.get("Instances") or []]
    vol_params = {"VolumeIds": [VERBOSE]} if verbose else {}
    raw_volumes = [v for page in _pages(call("describe_volumes"), **vol_params)
                   for v in page.get("Volumes") or []]
    snap_params = {"SnapshotIds": [VERBOSE]} if verbose else {"OwnerIds": ["self"]}
    raw_snaps = [s for page in _pages(call("describe_snapshots"), **snap_params)
                 for s in page.get("Snapshots") or []]

    names = {n for i in raw_instances if (n := _str(i.get("InstanceType"))) is not None}
    types = _vm_types(client, names) if names else {}
    instances = {inst.id: _with_user_data(client, inst) for raw in raw_instances
                 if (inst := _instance(raw, types)) is not None}

    volumes: list[Volume] = []
    for v in raw_volumes:
        vid = _str(v.get("VolumeId"))
        if vid is None:
            continue
        volumes.append(Volume(id=vid, size_gib=_int(v.get("Size")), status=_str(v.get("State")),
                              zone=_str(v.get("AvailabilityZone")), snapshot_id=_str(v.get("SnapshotId"))))
        for a in v.get("Attachments") or []:  # attachments the instance's mapping did not list
            inst = instances.get(_str(a.get("InstanceId")) or "")
            if inst is not None and all(x.volume_id != vid for x in inst.attachments):
                inst.attachments.append(Attachment(volume_id=vid, device=_str(a.get("Device")), is_root=False,
                                                   kind="runtime", status=_str(a.get("State"))))
    snapshots = [Snapshot(id=sid, volume_id=_str(s.get("VolumeId")), status=_str(s.get("State")),
                          size_gib=_int(s.get("VolumeSize")))
                 for s in raw_snaps if (sid := _str(s.get("SnapshotId"))) is not None]
    return Inventory(
        version=FORMAT_VERSION,
        source=f"ec2 {endpoint}" + (" (verbose: all accounts)" if verbose else ""),
        captured_at=_dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        volumes_dir=None,
        instances=sorted(instances.values(), key=lambda i: i.id),
        volumes=sorted({v.id: v for v in volumes}.values(), key=lambda v: v.id),
        snapshots=sorted({s.id: s for s in snapshots}.values(), key=lambda s: s.id),
    )


def read_inventory_api(endpoint: str | None, credentials: Credentials, verbose: bool = False,
                       signature_version: str | None = None) -> Inventory:
    """Inventory from the EC2 API at ``endpoint`` (default: the credentials' EC2_URL).

    ``verbose``: list every account's resources (needs cloud-admin credentials).
    Raises UsageError without an endpoint, ToolError when a call fails.
    """
    url = endpoint or credentials.endpoint
    if not url:
        raise UsageError("no EC2 endpoint: pass --url or set EC2_URL (e.g. http://CLC:8773/services/compute)")
    url = normalize_endpoint(url)
    return inventory_from_client(make_client(url, credentials, signature_version), url, verbose)
