# SPDX-License-Identifier: Apache-2.0
# Helpers shared by the guest jobs. lvm runs without udev; it creates /dev/mapper nodes itself.
C='devices { obtain_device_list_from_udev=0 use_devicesfile=0 } activation { udev_sync=0 udev_rules=0 monitoring=0 } global { thin_check_executable="" }'
# Every lvm step is bounded: a hung step must not hang the guest (the host has its own timeout too).
LVM_TIMEOUT=120
lv() { cmd=$1; shift; timeout $LVM_TIMEOUT lvm "$cmd" --config "$C" "$@"; }
begin() { echo "@@BEGIN $1"; }
end() { echo "@@END $1"; }
# wr NAME SIZE_KIB DMNAME OFFSET_KIB: copy pattern /pat/NAME.bin into /dev/mapper/DMNAME at OFFSET_KIB.
# The host generates /pat/NAME.bin from these lines (fixturegen/patterns.py parses them).
wr() {
  dd if=/pat/$1.bin of=/dev/mapper/$3 bs=4096 seek=$(($4 / 4)) conv=notrunc,fsync 2>/dev/null \
    || echo "WRITE-FAILED $1 $3"
  echo "WROTE $1 $2KiB $3 @$4KiB"
}
# wait_sync VG/LV FIELD: poll a percent field until it reads 100 (bounded).
wait_sync() {
  i=0
  while [ $i -lt 300 ]; do
    p=$(lv lvs --noheadings -o "$2" "$1" 2>/dev/null | tr -d ' ')
    case "$p" in 100*) echo "SYNCED $1 $p after ${i}s"; return 0;; esac
    sleep 1; i=$((i + 1))
  done
  echo "SYNC-TIMEOUT $1 $p"; return 1
}
