# SPDX-License-Identifier: Apache-2.0
"""``export ... -o s3://bucket/prefix`` and ``verify s3://bucket/prefix/manifest.json``: the options
and the per-volume loop of object-storage targets (:mod:`euca2kvm.export.s3`)."""

from __future__ import annotations

import argparse
import functools
import threading
from collections.abc import Callable
from typing import Any

from ..errors import Euca2kvmError, Interrupted, UsageError
from ..eucalyptus.discovery import Volume
from ..export.pipeline import ExportOptions
from ..export.s3 import ENCODINGS, Credentials, check_bucket, make_client, object_name, parse_url
from ..export.s3upload import MIN_PART_SIZE, PART_SIZE
from ..units import MiB
from .common import console_err, without_id
from .events import Reporter

MAX_PART_MIB = 5 * 1024  # S3's largest part: 5 GiB


def add_s3_args(p: argparse.ArgumentParser, upload: bool = True) -> None:
    g = p.add_argument_group("object storage (-o s3://bucket/prefix)")
    g.add_argument("--s3-endpoint", metavar="URL",
                   help="endpoint of an S3-compatible service (Ceph RGW, MinIO, ...); default: AWS")
    g.add_argument("--s3-profile", metavar="NAME",
                   help="profile of ~/.aws/credentials and ~/.aws/config (default: boto3's normal chain: "
                        "AWS_* environment variables, the default profile, instance roles)")
    g.add_argument("--s3-region", metavar="NAME", help="region (default: the profile's, else us-east-1)")
    if upload:
        g.add_argument("--s3-encoding", choices=ENCODINGS, default="gzip",
                       help="gzip (default): gzip'd raw, one member per 4 MiB block, holes cost ~4 KiB per "
                            "4 MiB; none: the raw bytes, holes uploaded as zeros (dense volumes)")
        g.add_argument("--s3-part-size", type=int, default=PART_SIZE // MiB, metavar="MIB",
                       help=f"multipart part size in MiB ({MIN_PART_SIZE // MiB}-{MAX_PART_MIB}, rounded up to 4 "
                            f"MiB; grown so that a disk fits in 9000 parts; default {PART_SIZE // MiB})")


def client_for(args: argparse.Namespace) -> Any:
    return make_client(Credentials(args.s3_endpoint, args.s3_profile, args.s3_region))


def run_s3_exports(vols: list[Volume], opts: ExportOptions, args: argparse.Namespace) -> int:
    """Export ``vols`` one after another (each upload sends parts in parallel) into ``-o s3://...``."""
    from ..export.s3export import export_to_s3
    from .export_cmd import check_exportable, volume_label, volume_source

    target = parse_url(args.output)
    if opts.fmt.name != "raw" or opts.fmt.compress:
        raise UsageError("s3:// targets take --format raw (gzip'd by default, see --s3-encoding)")
    if opts.sha256 and args.s3_encoding == "gzip":
        raise UsageError("--sha256 needs --s3-encoding none (the block digest is recorded either way)")
    if args.libvirt or args.boot_test:
        raise UsageError("--libvirt and --boot-test need a local output directory")
    if not MIN_PART_SIZE // MiB <= args.s3_part_size <= MAX_PART_MIB:
        raise UsageError(f"--s3-part-size must be between {MIN_PART_SIZE // MiB} and {MAX_PART_MIB} MiB")
    gz_objects = [v for v in vols if v.compressed]
    if gz_objects:
        raise UsageError(f"{gz_objects[0].id}: gzip'd snapshot objects are not uploaded to s3:// (they are "
                         "objects already); export them to a local directory")
    seen: dict[str, str] = {}
    for v in vols:
        name = object_name(v.id, args.s3_encoding)
        if name in seen and seen[name] != volume_label(v):
            raise UsageError(f"{seen[name]} and {volume_label(v)} would both be uploaded as {target.url(name)}")
        seen[name] = volume_label(v)
    client = client_for(args)
    check_bucket(client, target)
    cancel = threading.Event()
    errors: list[Euca2kvmError] = []
    with Reporter(args.json, sum(v.size for v in vols), cancel) as rep:
        for vol in vols:
            try:
                check_exportable(vol, args.force, rep, warm=args.warm)
                advance = rep.start(vol.id, vol.size)
                if opts.warm:  # --warm or --sync: a warm migration pass (export/s3sync.py)
                    from ..export.s3sync import s3_export_pass

                    entry, reused = s3_export_pass(functools.partial(volume_source, vol), client, target, opts,
                                                   args.sync,
                                                   encoding=args.s3_encoding, part_size=args.s3_part_size * MiB,
                                                   progress=advance, on_read=advance.read)
                else:
                    entry, reused = export_to_s3(volume_source(vol), client, target, opts,
                                                 encoding=args.s3_encoding, part_size=args.s3_part_size * MiB,
                                                 progress=advance, on_read=advance.read)
                rep.done(vol.id, entry, reused)
            except KeyboardInterrupt:
                # The upload stays in progress: the next run resumes it from its stored parts.
                console_err.print("interrupted; the upload is left in progress and a re-run resumes it")
                raise
            except Euca2kvmError as e:
                if isinstance(e, Interrupted):
                    raise
                rep.error(vol.id, without_id(e, vol.id))
                errors.append(e)
    if errors:
        if len(vols) > 1:
            console_err.print(f"{len(errors)} of {len(vols)} volume(s) failed")
        return errors[0].exit_code
    return 0


Check = Callable[[dict[str, Any]], tuple[str, str, int]]


def verify_s3(args: argparse.Namespace) -> tuple[list[dict[str, Any]], Check]:
    """The entries of an s3:// manifest and the check of one (status, detail, exit status)."""
    from ..export.s3 import load_manifest, manifest_url
    from ..export.s3verify import check_entry

    target = manifest_url(args.manifest)
    client = client_for(args)
    check_bucket(client, target)
    data = load_manifest(client, target, required=True)
    return data["volumes"], lambda entry: check_entry(client, target, entry)
