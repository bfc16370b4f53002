# SPDX-License-Identifier: Apache-2.0
"""read_inventory_api against a real EC2 Query server (moto in server mode, over HTTP)."""

from __future__ import annotations

import base64
import socket
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from _env import missing
from euca2kvm.errors import ToolError, UsageError
from euca2kvm.eucalyptus import api as apimod
from euca2kvm.eucalyptus.api import inventory_from_client, make_client, read_inventory_api
from euca2kvm.eucalyptus.credentials import Credentials
from euca2kvm.eucalyptus.inventory import Inventory, VmType

REGION = "us-east-1"  # moto's backends are per region; the same name is used to seed and to read
CREDS = Credentials(access_key="AKIDEUCA2KVMTEST", secret_key="not-a-real-secret", region=REGION)
EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
USER_DATA = b"#cloud-config\nruncmd: [[touch, /root/ran]]\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        missing("moto[server] not installed (pip install 'moto[server]')")
    port = _free_port()
    with pytest.MonkeyPatch.context() as mp:
        # Without the ~1200 stock AMIs and their snapshots every Describe* call is much faster.
        mp.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            # moto's backends are global to the process: another module's server left its
            # resources there. Start from an empty cloud.
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"),
                                   timeout=30).close()
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


@pytest.fixture(scope="module")
def seeded(moto_endpoint: str) -> dict[str, str]:
    """Two instances (one stopped), two data volumes attached out of order, a snapshot, a clone."""
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=moto_endpoint, region_name=REGION,
                       aws_access_key_id=CREDS.access_key, aws_secret_access_key=CREDS.secret_key)
    image = "ami-0b1c2d3e"  # moto does not validate image ids unless asked to
    ec2.create_key_pair(KeyName="ops-key")
    a = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="m1.small", KeyName="ops-key",
                          UserData=USER_DATA.decode(),
                          Placement={"AvailabilityZone": "us-east-1a"})["Instances"][0]
    b = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="c1.medium",
                          Placement={"AvailabilityZone": "us-east-1a"})["Instances"][0]
    ec2.stop_instances(InstanceIds=[b["InstanceId"]])
    data_g = ec2.create_volume(Size=3, AvailabilityZone="us-east-1a")["VolumeId"]
    data_f = ec2.create_volume(Size=2, AvailabilityZone="us-east-1a")["VolumeId"]
    ec2.attach_volume(VolumeId=data_g, InstanceId=a["InstanceId"], Device="/dev/sdg")
    ec2.attach_volume(VolumeId=data_f, InstanceId=a["InstanceId"], Device="/dev/sdf")
    snap = ec2.create_snapshot(VolumeId=data_f, Description="backup")["SnapshotId"]
    clone = ec2.create_volume(SnapshotId=snap, AvailabilityZone="us-east-1a")["VolumeId"]
    return {"a": a["InstanceId"], "a_root": a["BlockDeviceMappings"][0]["Ebs"]["VolumeId"],
            "b": b["InstanceId"], "data_f": data_f, "data_g": data_g, "snap": snap, "clone": clone}


def test_inventory_from_moto(moto_endpoint: str, seeded: dict[str, str]) -> None:
    inv = read_inventory_api(moto_endpoint, CREDS, verbose=False)
    assert inv.source == f"ec2 {moto_endpoint}" and inv.volumes_dir is None
    a = inv.instance(seeded["a"])
    assert a.state == "running" and a.root_device == "/dev/sda1"
    assert a.vm_type == VmType("m1.small", cpus=1, memory_mib=1740, disk_gib=160)  # moto's AWS figures
    assert [(x.volume_id, x.device, x.kind, x.is_root) for x in inv.ordered_volumes(a)] == [
        (seeded["a_root"], "/dev/sda1", "boot", True),
        (seeded["data_f"], "/dev/sdf", "runtime", False),
        (seeded["data_g"], "/dev/sdg", "runtime", False),
    ]
    boot = inv.boot_volume(a)
    assert boot is not None and boot.volume_id == seeded["a_root"] and boot.status == "attached"
    b = inv.instance(seeded["b"])
    assert b.state == "stopped"
    assert b.vm_type is not None and b.vm_type.name == "c1.medium" and b.vm_type.cpus == 2
    vols = {v.id: v for v in inv.volumes}
    assert (vols[seeded["data_f"]].size_gib, vols[seeded["data_f"]].status) == (2, "in-use")
    assert (vols[seeded["data_g"]].size_gib, vols[seeded["data_g"]].zone) == (3, "us-east-1a")
    assert vols[seeded["clone"]].snapshot_id == seeded["snap"]
    assert vols[seeded["clone"]].status == "available"
    snap = inv.snapshot(seeded["snap"])
    assert snap is not None and (snap.volume_id, snap.size_gib, snap.status) == (seeded["data_f"], 2, "completed")
    assert Inventory.from_json(inv.to_json()) == inv


def test_endpoint_from_credentials(moto_endpoint: str, seeded: dict[str, str]) -> None:
    creds = Credentials(access_key=CREDS.access_key, secret_key=CREDS.secret_key, region=REGION,
                        endpoint=moto_endpoint)
    inv = read_inventory_api(None, creds)
    assert seeded["a"] in [i.id for i in inv.instances]
    with pytest.raises(UsageError, match="no EC2 endpoint"):
        read_inventory_api(None, CREDS)


class _Canned:
    """An object botocore accepts as a raw HTTP response."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def _respond(status: int, xml: str) -> Any:
    from botocore.awsrequest import AWSResponse

    return AWSResponse("http://canned/", status, {"Content-Type": "text/xml"}, _Canned(xml.encode()))


def _client_with(moto_endpoint: str, op: str, handler: Callable[..., Any]) -> Any:
    client = make_client(moto_endpoint, CREDS)
    client.meta.events.register(f"before-send.ec2.{op}", handler)
    return client


def test_eucalyptus_instance_type_details(moto_endpoint: str, seeded: dict[str, str]) -> None:
    """Eucalyptus answers DescribeInstanceTypes with instanceTypeDetails name/cpu/memory/disk."""
    body = (f'<?xml version="1.0"?><DescribeInstanceTypesResponse xmlns="{EC2_NS}"><requestId>r</requestId>'
            "<instanceTypeDetails><item><name>m1.small</name><cpu>1</cpu><disk>5</disk><memory>256</memory>"
            "</item><item><name>c1.medium</name><cpu>2</cpu><disk>10</disk><memory>512</memory></item>"
            "</instanceTypeDetails></DescribeInstanceTypesResponse>")
    client = _client_with(moto_endpoint, "DescribeInstanceTypes", lambda **_: _respond(200, body))
    inv = inventory_from_client(client, moto_endpoint)
    assert inv.instance(seeded["a"]).vm_type == VmType("m1.small", cpus=1, memory_mib=256, disk_gib=5)
    assert inv.instance(seeded["b"]).vm_type == VmType("c1.medium", cpus=2, memory_mib=512, disk_gib=10)


def test_instance_types_not_implemented_falls_back(moto_endpoint: str, seeded: dict[str, str]) -> None:
    body = ('<?xml version="1.0"?><Response><Errors><Error><Code>InvalidAction</Code><Message>not '
            "implemented</Message></Error></Errors><RequestID>r</RequestID></Response>")
    client = _client_with(moto_endpoint, "DescribeInstanceTypes", lambda **_: _respond(400, body))
    inv = inventory_from_client(client, moto_endpoint)
    assert inv.instance(seeded["a"]).vm_type == VmType("m1.small")
    assert len(inv.ordered_volumes(inv.instance(seeded["a"]))) == 3


def test_verbose_sends_the_verbose_id(moto_endpoint: str) -> None:
    sent: dict[str, str] = {}
    empty = {"DescribeInstances": "reservationSet", "DescribeVolumes": "volumeSet",
             "DescribeSnapshots": "snapshotSet"}

    def handler(request: Any, **kw: Any) -> Any:
        op = kw["event_name"].rsplit(".", 1)[-1]
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
        sent[op] = body
        return _respond(200, f'<{op}Response xmlns="{EC2_NS}"><requestId>r</requestId>'
                             f"<{empty[op]}/></{op}Response>")

    for verbose in (True, False):
        client = make_client(moto_endpoint, CREDS)
        for op in empty:
            client.meta.events.register(f"before-send.ec2.{op}", handler)
        inv = inventory_from_client(client, moto_endpoint, verbose=verbose)
        assert inv.instances == [] and inv.volumes == [] and inv.snapshots == []
        if verbose:
            assert "InstanceId.1=verbose" in sent["DescribeInstances"]
            assert "VolumeId.1=verbose" in sent["DescribeVolumes"]
            assert "SnapshotId.1=verbose" in sent["DescribeSnapshots"]
            assert "Owner" not in sent["DescribeSnapshots"]
            assert "all accounts" in inv.source
        else:
            assert "verbose" not in "".join(sent.values())
            assert "Owner.1=self" in sent["DescribeSnapshots"]


def test_api_error_is_a_tool_error(moto_endpoint: str) -> None:
    with pytest.raises(ToolError, match="InvalidInstanceID.NotFound"):
        read_inventory_api(moto_endpoint, CREDS, verbose=True)  # moto does not know the admin id


def test_unreachable_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apimod, "MAX_ATTEMPTS", 1)  # no back-off between retries in the test
    url = f"http://127.0.0.1:{_free_port()}/services/compute"
    with pytest.raises(ToolError, match=r"127\.0\.0\.1"):
        read_inventory_api(url, CREDS)


def test_signature_v2_for_old_clouds(moto_endpoint: str) -> None:
    bodies: list[str] = []

    def spy(request: Any, **_: Any) -> None:
        bodies.append(request.body.decode() if isinstance(request.body, bytes) else str(request.body))

    client = make_client(moto_endpoint, CREDS, signature_version="v2")
    client.meta.events.register("before-send.ec2.DescribeInstances", spy)
    inventory_from_client(client, moto_endpoint)  # moto files SigV2 calls under another backend
    assert bodies and all("SignatureVersion=2" in b for b in bodies)
    with pytest.raises(UsageError, match="signature version"):
        make_client(moto_endpoint, CREDS, signature_version="v9")


def test_identity_from_the_api(moto_endpoint: str, seeded: dict[str, str]) -> None:
    """What DescribeInstances/DescribeInstanceAttribute give, and what the API never gives, said so."""
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=moto_endpoint, region_name=REGION,
                       aws_access_key_id=CREDS.access_key, aws_secret_access_key=CREDS.secret_key)
    raw = ec2.describe_instances(InstanceIds=[seeded["a"]])["Reservations"][0]["Instances"][0]
    inv = read_inventory_api(moto_endpoint, CREDS)
    a = inv.instance(seeded["a"])
    assert a.key_name == "ops-key" and a.public_key is None
    assert base64.b64decode(a.user_data or "") == USER_DATA
    assert a.private_ip == raw["PrivateIpAddress"] and a.private_dns == raw["PrivateDnsName"]
    assert a.mac == raw["NetworkInterfaces"][0]["MacAddress"].lower()
    assert {"public_key", "node"} <= set(a.unavailable) and "mac" not in a.unavailable
    b = inv.instance(seeded["b"])
    assert (b.key_name, b.user_data) == (None, None)
    assert Inventory.from_json(inv.to_json()) == inv


def test_identity_without_interfaces_or_user_data(moto_endpoint: str, seeded: dict[str, str]) -> None:
    """A Eucalyptus EDGE cloud sends no networkInterfaceSet; a failed userData call is not fatal."""
    def strip_nics(parsed: dict[str, Any], **_: Any) -> None:
        for r in parsed.get("Reservations") or []:
            for i in r.get("Instances") or []:
                i.pop("NetworkInterfaces", None)

    client = _client_with(moto_endpoint, "DescribeInstanceAttribute",
                          lambda **_: _respond(403, '<?xml version="1.0"?><Response><Errors><Error>'
                                               "<Code>UnauthorizedOperation</Code><Message>no</Message>"
                                               "</Error></Errors><RequestID>r</RequestID></Response>"))
    client.meta.events.register("after-call.ec2.DescribeInstances", strip_nics)
    a = inventory_from_client(client, moto_endpoint).instance(seeded["a"])
    assert a.mac is None and a.user_data is None
    assert a.unavailable == ["mac", "node", "public_key", "user_data"]
