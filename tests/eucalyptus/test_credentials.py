# SPDX-License-Identifier: Apache-2.0
"""Credential and endpoint resolution: flags > explicit eucarc > environment, euca2ools style."""

from __future__ import annotations

from pathlib import Path

import pytest

from euca2kvm.errors import UsageError
from euca2kvm.eucalyptus.credentials import (
    DEFAULT_REGION,
    normalize_endpoint,
    parse_eucarc,
    resolve_credentials,
)

# What ``euca_conf --get-credentials`` (4.x) writes, trimmed; the first line must never be run.
EUCARC = """\
EUCA_KEY_DIR=$(cd $(dirname ${BASH_SOURCE:-$0}); pwd -P)
export EC2_URL=http://10.1.0.10:8773/services/compute
export S3_URL=http://10.1.0.10:8773/services/objectstorage
export AWS_IAM_URL=http://10.1.0.10:8773/services/Euare
export EUSTORE_URL=http://emis.eucalyptus.com/
export EC2_PRIVATE_KEY=${EUCA_KEY_DIR}/euca2-admin-7f0e1c2b-pk.pem
export EC2_ACCESS_KEY='AKIEUCARC0000000001'
export EC2_SECRET_KEY='rc/Secret+Key=with$dollar'
export AWS_ACCESS_KEY='AKIEUCARC0000000001'
export AWS_SECRET_KEY='rc/Secret+Key=with$dollar'
export AWS_CREDENTIAL_FILE=${EUCA_KEY_DIR}/iamrc
export EC2_USER_ID='000123456789'
alias ec2-bundle-image="ec2-bundle-image --cert ${EC2_CERT} --privatekey ${EC2_PRIVATE_KEY}"
export TOUCHED=$(touch /tmp/euca2kvm-must-not-exist)
"""


def test_eucarc_parsed_not_executed(tmp_path: Path) -> None:
    rc = tmp_path / "eucarc"
    rc.write_text(EUCARC)
    values = parse_eucarc(str(rc))
    assert values["EC2_URL"] == "http://10.1.0.10:8773/services/compute"
    assert values["EC2_SECRET_KEY"] == "rc/Secret+Key=with$dollar"  # single quotes: no expansion
    assert values["EC2_PRIVATE_KEY"] == f"{tmp_path}/euca2-admin-7f0e1c2b-pk.pem"
    assert values["AWS_CREDENTIAL_FILE"] == f"{tmp_path}/iamrc"
    assert "TOUCHED" not in values and "EUCA_KEY_DIR" not in values
    assert not Path("/tmp/euca2kvm-must-not-exist").exists()


def test_eucarc_beats_environment(tmp_path: Path) -> None:
    rc = tmp_path / "eucarc"
    rc.write_text(EUCARC)
    env = {"AWS_ACCESS_KEY_ID": "AKIENV", "AWS_SECRET_ACCESS_KEY": "envsecret", "EC2_URL": "http://other:8773/"}
    c = resolve_credentials(eucarc=str(rc), env=env)
    assert (c.access_key, c.secret_key) == ("AKIEUCARC0000000001", "rc/Secret+Key=with$dollar")
    assert c.endpoint == "http://10.1.0.10:8773/services/compute"
    assert c.region == DEFAULT_REGION and c.source == f"eucarc {rc}"
    assert "rc/Secret" not in repr(c)


def test_flags_beat_everything(tmp_path: Path) -> None:
    rc = tmp_path / "eucarc"
    rc.write_text(EUCARC)
    c = resolve_credentials(url="clc.example:8773", access_key="AKIFLAG", secret_key="flagsecret",
                            region="r1", eucarc=str(rc), env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"})
    assert (c.access_key, c.secret_key, c.region, c.source) == ("AKIFLAG", "flagsecret", "r1", "command line")
    assert c.endpoint == "http://clc.example:8773/services/compute"
    with pytest.raises(UsageError, match="together"):
        resolve_credentials(access_key="AKIFLAG", env={})


@pytest.mark.parametrize(("env", "expected"), [
    ({"AWS_ACCESS_KEY_ID": "A1", "AWS_SECRET_ACCESS_KEY": "S1", "EC2_ACCESS_KEY": "A3", "EC2_SECRET_KEY": "S3"},
     ("A1", "S1")),
    ({"AWS_ACCESS_KEY": "A2", "AWS_SECRET_KEY": "S2"}, ("A2", "S2")),
    ({"EC2_ACCESS_KEY": "A3", "EC2_SECRET_KEY": "S3"}, ("A3", "S3")),
])
def test_environment_variable_names(env: dict[str, str], expected: tuple[str, str]) -> None:
    c = resolve_credentials(env={**env, "EC2_URL": "https://clc:8773/services/compute",
                                 "AWS_SESSION_TOKEN": "tok", "AWS_DEFAULT_REGION": "euca-east"})
    assert (c.access_key, c.secret_key, c.session_token, c.region) == (*expected, "tok", "euca-east")
    assert c.endpoint == "https://clc:8773/services/compute" and c.source == "environment"


def test_credential_file(tmp_path: Path) -> None:
    iamrc = tmp_path / "iamrc"
    iamrc.write_text("AWSAccessKeyId=AKIIAMRC\nAWSSecretKey=iamsecret\n")
    c = resolve_credentials(env={"AWS_CREDENTIAL_FILE": str(iamrc)})
    assert (c.access_key, c.secret_key, c.endpoint) == ("AKIIAMRC", "iamsecret", None)
    iamrc.write_text("AWSAccessKeyId=AKIIAMRC\n")
    with pytest.raises(UsageError, match="lacks"):
        resolve_credentials(env={"AWS_CREDENTIAL_FILE": str(iamrc)})


def test_missing_or_half_credentials() -> None:
    with pytest.raises(UsageError, match="no EC2 credentials"):
        resolve_credentials(env={})
    with pytest.raises(UsageError, match="no secret key"):
        resolve_credentials(env={"EC2_ACCESS_KEY": "A"})


@pytest.mark.parametrize(("url", "expected"), [
    ("clc", "http://clc:8773/services/compute"),
    ("10.1.0.10:8773", "http://10.1.0.10:8773/services/compute"),
    ("http://clc:8773/services/Eucalyptus", "http://clc:8773/services/Eucalyptus"),
    (" https://clc/services/compute ", "https://clc/services/compute"),
])
def test_normalize_endpoint(url: str, expected: str) -> None:
    assert normalize_endpoint(url) == expected


@pytest.mark.parametrize("url", ["ftp://clc/", "http://", "http://u:pw@clc:8773/", "http://clc:99999/", "a/b", ""])
def test_bad_endpoint(url: str) -> None:
    with pytest.raises(UsageError):
        normalize_endpoint(url)


def test_eucarc_oversized_or_behind_symlink_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bounded read: an oversized eucarc is a usage error (exit 2), one behind a symlink is refused (exit 5)."""
    import euca2kvm.eucalyptus.credentials as credmod
    from euca2kvm.errors import IOFailure

    rc = tmp_path / "eucarc"
    rc.write_text("export EC2_ACCESS_KEY=AKIDEXAMPLE\nexport EC2_SECRET_KEY=secret\n" + "#" * 200 + "\n")
    link = tmp_path / "link"
    link.symlink_to(rc)
    with pytest.raises(IOFailure) as ei:
        credmod.parse_eucarc(str(link))
    assert ei.value.exit_code == 5
    monkeypatch.setattr(credmod, "MAX_RC_BYTES", 100)
    with pytest.raises(UsageError) as eu:
        credmod.parse_eucarc(str(rc))
    assert eu.value.exit_code == 2
