#!/bin/busybox sh
# PID 1 of the twtrace test VM (packed by `cargo xtask vm`, see xtask/src/vm/rootfs.rs).
# It runs under busybox's shell, which always prefers its own applets (its `ip` knows no netns):
# everything here that needs the real iproute2 calls it by path. The guest command itself runs
# under dash (/bin/sh), which honours PATH, so `ip` there is iproute2's /usr/sbin/ip.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb

say() { echo "twtrace-vm: $*"; }
mnt() { # mnt TYPE DIR [OPTIONS]: a failure is reported, not fatal (the test may not need it)
  mkdir -p "$2"
  mount -t "$1" ${3:+-o "$3"} "$1" "$2" || say "cannot mount $1 on $2"
}

mnt proc /proc
mnt sysfs /sys
mnt devtmpfs /dev
mnt devpts /dev/pts
mnt tmpfs /dev/shm mode=1777
# /run for `ip netns` (it bind-mounts namespaces there). No tmpfs on /tmp: / is a tmpfs already
# and a mount would hide files added under /tmp.
mnt tmpfs /run mode=0755
mnt tracefs /sys/kernel/tracing
mnt debugfs /sys/kernel/debug
mnt securityfs /sys/kernel/security
mnt bpf /sys/fs/bpf
mnt cgroup2 /sys/fs/cgroup
mkdir -p /run/netns /run/lock
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
hostname twtrace-vm

# Modules asked for at boot, dependencies first (order computed on the host from modules.dep).
while read -r m; do
  insmod "/lib/modules/$(uname -r)/$m" || say "insmod $m failed"
done < /etc/twtrace-vm/modules

/usr/sbin/ip link set lo up || say "cannot bring lo up"

say "ready, kernel $(uname -r), uptime $(cut -d' ' -f1 /proc/uptime) s"
cd /root
/bin/sh /etc/twtrace-vm/command.sh < /dev/null
rc=$?
# The host looks for this line; the newline first keeps it on a line of its own.
echo
echo "TWTRACE_VM_EXIT=$rc"
say "uptime $(cut -d' ' -f1 /proc/uptime) s"
sync
poweroff -f
