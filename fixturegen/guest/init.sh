#!/bin/busybox sh
# SPDX-License-Identifier: Apache-2.0
# PID 1 of the oracle guest: load the device-mapper modules, run one job, store its report on
# the output disk (e2k.out=/dev/vdX) and power off. Job output never goes to the console, so
# kernel messages cannot interleave with it.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m.ko || echo "E2K insmod $m failed" > /dev/ttyS0; done
mode=none; out=none
for a in $(cat /proc/cmdline); do
  case $a in e2k.mode=*) mode=${a#e2k.mode=};; e2k.out=*) out=${a#e2k.out=};; esac
done
sleep 1
echo "E2K-START $mode" > /dev/ttyS0
. /jobs/common.sh
if [ -f "/jobs/$mode.sh" ]; then
  ( . "/jobs/$mode.sh" ) > /tmp/report 2>&1
  echo "@@RC $?" >> /tmp/report
else
  echo "@@RC 99 unknown mode $mode" > /tmp/report
fi
sync
if [ -b "$out" ]; then dd if=/tmp/report of="$out" bs=4096 conv=fsync 2>/dev/null; fi
tail -n 5 /tmp/report > /dev/ttyS0
echo "E2K-DONE $mode" > /dev/ttyS0
sync
poweroff -f
