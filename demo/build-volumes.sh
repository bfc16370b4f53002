#!/usr/bin/env bash
# Rebuild demo/volumes.tar.xz: a small Eucalyptus volumes directory made with the real lvm2.
# Needs root and loop devices (only to regenerate; the demo itself uses the committed archive).
#
#   vol-0de0a001         overlay container made the way Eucalyptus does (sparse file, pvcreate,
#                        vgcreate euca-ebs-storage-vg-<id>, lvcreate --addtag <id> -n euca-<id> -l 100%FREE),
#                        holding an ext4 filesystem
#   vol-0de0a002         a volume whose VG was extended onto a temporary file by an interrupted
#   vol-0de0a002Qx7bZk   snapshot: the LV spans both files
#   snap-0de0b001        a snapshot file: a raw disk, no LVM label
set -euo pipefail
export LVM_SUPPRESS_FD_WARNINGS=1
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
loops=()
cleanup() { for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
attach() { local l; l=$(losetup -f --show "$1"); loops+=("$l"); echo "$l"; }
cd "$work"
mkdir volumes root
printf 'Hello from an EBS volume exported by euca2kvm.\n' > root/README.txt
seq 1 20000 > root/numbers.txt

# 1: overlay recipe, 28 MiB LV (+4 MiB LVM header room, like Eucalyptus' size*GiB + 4 MiB)
id=vol-0de0a001
dd if=/dev/zero of=volumes/$id count=1 bs=1M seek=$((32 - 1)) status=none
L=$(attach volumes/$id)
pvcreate -q --devices "$L" "$L"
vgcreate -q --devices "$L" euca-ebs-storage-vg-$id "$L"
lvcreate -q --devices "$L" --driverloaded n --addtag $id -n euca-$id -l 100%FREE euca-ebs-storage-vg-$id 2>/dev/null
off=$(pvs --devices "$L" --noheadings --units b --nosuffix -o pe_start "$L" | tr -d ' ')
size=$(lvs --devices "$L" --driverloaded n --noheadings --units b --nosuffix -o lv_size \
       euca-ebs-storage-vg-$id/euca-$id 2>/dev/null | tr -d ' ')
losetup -d "$L"; loops=()
truncate -s "$size" fs.img
mkfs.ext4 -q -F -L demo-volume -d root fs.img
dd if=fs.img of=volumes/$id bs=1M seek="$off" oflag=seek_bytes conv=notrunc,sparse status=none

# 2: a VG on two files (the volume and an interrupted snapshot's temporary file), LV spanning both
id=vol-0de0a002; tmpf=${id}Qx7bZk
truncate -s 12M volumes/$id; truncate -s 12M volumes/$tmpf
A=$(attach volumes/$id); B=$(attach volumes/$tmpf)
pvcreate -q --devices "$A" --devices "$B" "$A" "$B"
vgcreate -q --devices "$A" --devices "$B" euca-ebs-storage-vg-$id "$A"
lvcreate -q --devices "$A" --devices "$B" --driverloaded n --addtag $id -n euca-$id -l 100%FREE \
  euca-ebs-storage-vg-$id 2>/dev/null
vgextend -q --devices "$A" --devices "$B" euca-ebs-storage-vg-$id "$B"
lvextend -q --devices "$A" --devices "$B" --driverloaded n -l +100%FREE euca-ebs-storage-vg-$id/euca-$id 2>/dev/null
lvs --devices "$A" --devices "$B" --driverloaded n --segments -o lv_name,seg_pe_ranges euca-ebs-storage-vg-$id 2>/dev/null
losetup -d "$A"; losetup -d "$B"; loops=()
python3 - "$work/volumes" <<'PY'
import sys, os
d = sys.argv[1]
# a recognisable pattern at the start of each file's data area (pe_start is 1 MiB here)
for name, text in (("vol-0de0a002", b"first PV data "), ("vol-0de0a002Qx7bZk", b"second PV data ")):
    with open(os.path.join(d, name), "r+b") as f:
        f.seek(1 << 20)
        f.write(text * 1000)
PY

# 3: a raw snapshot file (what Eucalyptus dd's out of a COW snapshot)
cp --sparse=always fs.img volumes/snap-0de0b001

tar -C volumes --sparse --owner=0 --group=0 --numeric-owner -cJf "$here/volumes.tar.xz" .
ls -l "$here/volumes.tar.xz"
