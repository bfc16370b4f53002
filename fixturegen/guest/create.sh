# SPDX-License-Identifier: Apache-2.0
# Create job: real lvm2 + real kernel device-mapper build the fixture VGs on /dev/vda../dev/vdd.
# Extent size is lvm's default (4 MiB). Writes happen at 4 KiB granularity with per-block labels.
set -x
lv pvcreate /dev/vda /dev/vdb /dev/vdc /dev/vdd
# vgraid: two PVs, raid1 and old-style mirror.
lv vgcreate vgraid /dev/vda /dev/vdb
lv lvcreate --type raid1 -m1 -L 16M -n r1 vgraid
wait_sync vgraid/r1 sync_percent
lv lvcreate --type mirror -m1 --mirrorlog core -L 16M -n m1 vgraid
wait_sync vgraid/m1 copy_percent
set +x
wr r1-a 3072 vgraid-r1 1024
wr r1-b 64 vgraid-r1 16320
wr m1-a 2048 vgraid-m1 4096
set -x
# vgthin: thin pool (64 KiB chunks), two thin LVs, a thin snapshot; writes after the snapshot.
lv vgcreate vgthin /dev/vdc
lv lvcreate --type thin-pool -L 24M --chunksize 64k --poolmetadatasize 4M -n pool vgthin
lv lvcreate -V 32M -T vgthin/pool -n thin1
lv lvcreate -V 32M -T vgthin/pool -n thin2
set +x
wr t1-a 3072 vgthin-thin1 1024
wr t1-b 256 vgthin-thin1 20480
wr t2-a 2048 vgthin-thin2 8192
wr t2-b 64 vgthin-thin2 32704
set -x
lv lvcreate -s -kn -n snap1 vgthin/thin1
set +x
wr t1-after 1024 vgthin-thin1 2048
wr t1-new 128 vgthin-thin1 12288
wr s1-own 64 vgthin-snap1 28672
set -x
# vgcow: classic COW snapshots; origin written after the snapshot; a second snapshot overflows.
lv vgcreate vgcow /dev/vdd
lv lvcreate -L 16M -n origin vgcow
set +x
wr o-a 4096 vgcow-origin 0
set -x
lv lvcreate -s -L 8M -c 16k -n csnap vgcow/origin
set +x
wr o-after 1024 vgcow-origin 1024
wr o-new 256 vgcow-origin 12288
wr cs-own 64 vgcow-csnap 8192
set -x
lv lvcreate -L 8M -n origin2 vgcow
set +x
wr o2-a 2048 vgcow-origin2 0
set -x
lv lvcreate -s -L 4M -c 4k -n full vgcow/origin2
set +x
wr o2-over 8192 vgcow-origin2 0
set -x
lv lvs -a -o vg_name,lv_name,lv_attr,lv_size,segtype,seg_pe_ranges,data_percent,snap_percent --units b
lv vgchange -an vgraid vgthin vgcow
lv lvs -a -o vg_name,lv_name,lv_attr
sync
