#!/bin/bash
# Copied from the team reference recipe ceph-single-node.sh (machine-recipes.md section 9, proven on
# Debian 12 ceph 16.2 on 2026-12-01); unchanged but for this comment. Used by tests/rbd/cluster.py.
# A throw-away single-node Ceph cluster (Debian 12 ceph 16.2 "pacific") on 127.0.0.1, for tests.
# No device-mapper, no LVM, no ceph-volume, no systemd, no mgr: one mon + one OSD whose object store
# is memstore (RAM; default) or bluestore on a plain sparse file (CEPH_OBJECTSTORE=bluestore).
# cephx on. Pools (default: rbd) have size 1. A client.eucalyptus key with rbd caps is made, as a
# Eucalyptus storage controller would use. Nothing outside DIR is touched (no /etc/ceph files).
#
#   ceph-single-node.sh start DIR [MON_PORT] [PORT_MIN]   # prints KEY=VALUE lines (conf, keyrings, ...)
#   ceph-single-node.sh env   DIR                         # the same lines for a running cluster
#   ceph-single-node.sh stop  DIR                         # kill exactly the daemons of DIR (pid files)
#
# Ports: the mon listens on MON_PORT (msgr2) and MON_PORT+1 (msgr1); the OSD binds inside
# PORT_MIN..PORT_MIN+99. Defaults 46789 and 46800. Pick other ports to run several clusters at once.
# Environment: CEPH_POOLS="rbd other" (pools to create), CEPH_OBJECTSTORE=memstore|bluestore,
#              CEPH_STORE_BYTES (memstore capacity / bluestore file size; default 8 GiB, sparse),
#              CEPH_NO_INSTALL=1 (fail instead of installing missing packages).
set -euo pipefail

PKGS=(ceph-mon ceph-osd ceph-common)  # the recipe also installs python3-rbd qemu-block-extra; unused here

die() { echo "ceph-single-node: $*" >&2; exit 1; }

need_pkgs() {
  local miss=() p
  for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || miss+=("$p"); done
  ((${#miss[@]})) || return 0
  [[ -z "${CEPH_NO_INSTALL:-}" ]] || die "missing packages: ${miss[*]}"
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null 2>&1 || true
  # without systemd the package scripts start no daemon; they only add the user ceph and /var/lib/ceph
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${miss[@]}" >/dev/null || die "could not install ${miss[*]}"
}

print_env() {
  local d=$1
  echo "CEPH_DIR=$d"
  echo "CEPH_CONF=$d/ceph.conf"
  echo "CEPH_ID=eucalyptus"
  echo "CEPH_KEYRING=$d/ceph.client.eucalyptus.keyring"
  echo "CEPH_ADMIN_KEYRING=$d/ceph.client.admin.keyring"
  echo "CEPH_MON=$(sed -n 's/^mon host = //p' "$d/ceph.conf")"
  echo "CEPH_POOLS=$(cat "$d/pools")"
}

# wait_for SECONDS CMD... : retry CMD until it succeeds
wait_for() {
  local t=$1; shift; local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 0.3
  done
}

start_daemon() {  # start_daemon NAME CMD... : foreground daemon in its own session; its pid -> run/NAME.pid
  local name=$1; shift
  # the inner bash writes its own pid and then execs the daemon, so the pid file names the daemon
  # itself whether or not setsid had to fork
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$D/run/$name.pid" "$@" -f </dev/null >>"$D/log/$name.out" 2>&1 &
  wait_for 10 test -s "$D/run/$name.pid" || die "$name did not start"
}

running() { [[ -r "/proc/$1/stat" ]] && [[ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]]; }  # not a zombie

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

cmd_start() {
  D=$1; MON_PORT=${2:-46789}; PORT_MIN=${3:-46800}
  local store=${CEPH_OBJECTSTORE:-memstore} bytes=${CEPH_STORE_BYTES:-8589934592}
  local pools=${CEPH_POOLS:-rbd}
  local t0=$SECONDS p
  need_pkgs
  for p in "$MON_PORT" $((MON_PORT + 1)) "$PORT_MIN"; do port_free "$p" || die "port $p on 127.0.0.1 is in use"; done
  mkdir -p "$D"; D=$(cd "$D" && pwd)
  [[ ! -e "$D/ceph.conf" ]] || die "$D already holds a cluster (stop it and remove the directory first)"
  trap 'rc=$?; ((rc == 0)) || cmd_stop "$D" >/dev/null 2>&1' EXIT   # a failed start leaves no daemon
  mkdir -p "$D"/{mon/ceph-a,osd/ceph-0,run,log}
  local fsid; fsid=$(cat /proc/sys/kernel/random/uuid)
  cat >"$D/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$((MON_PORT + 1))]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind port min = $PORT_MIN
ms bind port max = $((PORT_MIN + 99))
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
auth allow insecure global id reclaim = false

[mon]
run dir = $D/run
admin socket = $D/run/\$cluster-\$name.asok
log file = $D/log/\$cluster-\$name.log
mon data = $D/mon/\$cluster-\$id
keyring = $D/mon/\$cluster-\$id/keyring
mon cluster log file = $D/log/\$cluster.log

[osd]
run dir = $D/run
admin socket = $D/run/\$cluster-\$name.asok
log file = $D/log/\$cluster-\$name.log
osd data = $D/osd/\$cluster-\$id
keyring = $D/osd/\$cluster-\$id/keyring
osd objectstore = $store
memstore device bytes = $bytes
bluestore block path = $D/osd/\$cluster-\$id/block.file
bluestore block size = $bytes
bluestore block create = true
osd op num shards = 1
osd op num threads per shard = 2

[client]
keyring = $D/\$cluster.\$name.keyring
EOF
  echo "$pools" >"$D/pools"
  local C=(-c "$D/ceph.conf")
  # keys: mon., client.admin; monmap; mon store
  ceph-authtool --create-keyring "$D/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$D/ceph.client.admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool "$D/mon.keyring" --import-keyring "$D/ceph.client.admin.keyring" >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$((MON_PORT + 1))]" \
    "$D/monmap" >/dev/null
  ceph-mon "${C[@]}" --mkfs -i a --monmap "$D/monmap" --keyring "$D/mon.keyring" >/dev/null 2>"$D/log/mkfs-mon.err" \
    || die "ceph-mon --mkfs failed: $(tail -3 "$D/log/mkfs-mon.err")"
  start_daemon mon.a ceph-mon "${C[@]}" -i a
  wait_for 60 timeout 10 ceph "${C[@]}" mon stat || die "mon did not come up (see $D/log)"
  # OSD: "osd new" registers id + cephx key; mkfs makes the (memstore|bluestore) store
  local uuid secret id
  uuid=$(cat /proc/sys/kernel/random/uuid); secret=$(ceph-authtool --gen-print-key)
  id=$(echo "{\"cephx_secret\": \"$secret\"}" | ceph "${C[@]}" osd new "$uuid" -i -)
  [[ "$id" == 0 ]] || die "unexpected osd id '$id'"
  ceph-authtool --create-keyring "$D/osd/ceph-0/keyring" --name osd.0 --add-key "$secret" >/dev/null
  ceph-osd "${C[@]}" -i 0 --mkfs --osd-uuid "$uuid" >/dev/null 2>"$D/log/mkfs-osd.err" \
    || die "ceph-osd --mkfs failed: $(tail -3 "$D/log/mkfs-osd.err")"
  start_daemon osd.0 ceph-osd "${C[@]}" -i 0
  local q; printf -v q '%q ' "${C[@]}"
  wait_for 90 bash -c "ceph $q osd dump 2>/dev/null | grep -q '^osd.0 up'" || die "osd.0 did not come up (see $D/log)"
  local caps=""
  for p in $pools; do
    ceph "${C[@]}" osd pool create "$p" 8 8 replicated >/dev/null 2>&1 || die "could not create pool $p"
    [[ "$(ceph "${C[@]}" osd pool get "$p" size)" == "size: 1" ]] || die "pool $p does not have size 1"
    rbd "${C[@]}" pool init "$p"
    caps+="${caps:+, }profile rbd pool=$p"
  done
  # the pool's PGs are active once an object can be written
  for p in $pools; do
    wait_for 90 timeout 20 rados "${C[@]}" -p "$p" put ceph-single-node.ready /dev/null || die "pool $p not writable"
    rados "${C[@]}" -p "$p" rm ceph-single-node.ready
  done
  ceph "${C[@]}" auth get-or-create client.eucalyptus mon 'profile rbd' osd "$caps" \
    -o "$D/ceph.client.eucalyptus.keyring" >/dev/null
  print_env "$D"
  echo "CEPH_START_SECONDS=$((SECONDS - t0))"
}

cmd_stop() {  # kill the daemons named by DIR/run/*.pid, and only if their command line names DIR's conf
  local d f pid n pids=()
  [[ -d "$1/run" ]] || return 0
  d=$(cd "$1" && pwd)
  for f in "$d"/run/osd.*.pid "$d"/run/mon.*.pid; do
    [[ -f "$f" ]] || continue
    pid=$(cat "$f")
    if [[ "$pid" =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-c $d/ceph.conf "; then
      kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    fi
  done
  for n in $(seq 75); do  # up to 15 s for a clean shutdown, then SIGKILL
    local up=0
    for pid in "${pids[@]}"; do running "$pid" && up=1; done
    ((up)) || break
    sleep 0.2
  done
  for pid in "${pids[@]}"; do running "$pid" && { kill -KILL "$pid" 2>/dev/null || true; }; done
  rm -f "$d"/run/*.pid "$d"/run/*.asok
}

case "${1:-}" in
  start) [[ $# -ge 2 ]] || die "usage: $0 start DIR [MON_PORT] [PORT_MIN]"; shift; cmd_start "$@" ;;
  stop)  [[ $# -eq 2 ]] || die "usage: $0 stop DIR"; cmd_stop "$2" ;;
  env)   [[ $# -eq 2 ]] || die "usage: $0 env DIR"; print_env "$(cd "$2" && pwd)" ;;
  *) die "usage: $0 start DIR [MON_PORT] [PORT_MIN] | env DIR | stop DIR" ;;
esac
