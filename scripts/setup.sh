#!/usr/bin/env bash
# Idempotent set-up for a Debian bookworm machine: installs only what is missing and says what.
# Facts behind each step: README, "Toolchain" (Debian rustc-web 1.96 + rust-web-src for
# -Z build-std=core, bpf-linker built against Debian's LLVM 22).
set -euo pipefail

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (apt-get and BPF both need it): sudo $0"
[ -r /etc/os-release ] || die "cannot read /etc/os-release; this script serves Debian 12 (bookworm) only"
. /etc/os-release
[ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ] ||
  die "this script serves Debian 12 (bookworm); found ${PRETTY_NAME:-unknown}. Install by hand: rustc 1.96 with rust-src, bpf-linker (LLVM 22), iproute2, nftables"
[ "$(uname -m)" = x86_64 ] || die "only x86_64 is supported for now (found $(uname -m))"

export CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
export PATH="$CARGO_HOME/bin:$PATH"

# What building twtrace needs: the eBPF compiler (rustc-web 1.96 + sources), LLVM 22 for
# bpf-linker, and the CA roots cargo's HTTPS to crates.io checks against (not pulled in
# without recommends). The quick start installs nothing more: it runs on production hosts.
APT_PKGS=(rustc-web cargo-web rust-web-src llvm-22-dev g++ ca-certificates)
# TWTRACE_WITH_VM=1 (the test command): what the tests and the bench drive. iproute2 for
# netns/veth, nftables for the NAT router, procps for sysctl, kmod, dwarves (pahole: the BTF
# reader's cross-check), wrk, nginx-light and bpftrace (the bench); cargo-fmt and
# cargo-clippy for the lint step on a machine without a rustup toolchain (with one, its own
# come first in PATH); for the VM tests (`cargo xtask vm-test`) QEMU, busybox for the
# initramfs, xz for 6.12's .ko.xz modules (xtask writes the cpio archive itself; kernels come
# from `apt-get download`, nothing installed).
if [ "${TWTRACE_WITH_VM:-0}" = 1 ]; then
  APT_PKGS+=(iproute2 nftables procps kmod dwarves wrk nginx-light bpftrace)
  APT_PKGS+=(qemu-system-x86 busybox-static xz-utils)
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    APT_PKGS+=(rustfmt-web rust-web-clippy)
  fi
fi
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "apt: installing ${missing[*]}"
  apt-get update -qq
  # nginx-light is only the bench's server, which runs its own instance: its package must not
  # start (or enable at boot) a web server on port 80. A policy-rc.d refusing every start
  # holds for this install only (one the machine already has is left alone).
  own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    { [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d; die "apt-get install failed (see above)"; }
  [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
  if [[ " ${missing[*]} " == *" nginx-light "* ]] && command -v systemctl >/dev/null; then
    say "nginx: not started at boot (installed for the bench only)"
    systemctl disable nginx >/dev/null 2>&1 || true
  fi
else
  say "apt: all packages present"
fi
# The VM tests fetch stock kernels with `apt-get download`: they need current package lists,
# including bookworm-security (the 6.12 kernels live there), even when nothing was missing.
# Lists older than a day may name a kernel build the archive has since dropped (a 404).
if [ "${TWTRACE_WITH_VM:-0}" = 1 ] &&
  [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*security*Packages*' -mmin -1440 2>/dev/null)" ]; then
  say "apt: updating package lists for the VM kernels (none from bookworm-security in the last day)"
  apt-get update -qq
fi
[ -d /usr/lib/rustlib/src/rust/library ] || die "rust-web-src did not provide /usr/lib/rustlib/src/rust/library"
# An older rustc-web (installed before 1.96 reached bookworm-security) is upgraded; a newer one
# may bring another LLVM major than bpf-linker's, so it is refused with what to do.
if ! /usr/bin/rustc --version | grep -q ' 1\.96\.'; then
  say "apt: upgrading rustc-web, cargo-web, rust-web-src to 1.96 (found: $(/usr/bin/rustc --version))"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --only-upgrade rustc-web cargo-web rust-web-src >/dev/null
fi
/usr/bin/rustc --version | grep -q ' 1\.96\.' ||
  die "expected Debian rustc-web 1.96 (LLVM 22, as bpf-linker 0.13 is built) at /usr/bin/rustc, got: $(/usr/bin/rustc --version). Install it with: apt-get install rustc-web=1.96\* cargo-web=1.96\* rust-web-src=1.96\*"

# bpf-linker 0.13.0 against the system LLVM 22 (same LLVM major as Debian's rustc).
if ! bpf-linker --version 2>/dev/null | grep -q '0\.13\.0'; then
  say "cargo: installing bpf-linker 0.13.0 (LLVM 22, ~2 min)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install --locked --no-default-features --features llvm-22 bpf-linker@0.13.0
else
  say "bpf-linker 0.13.0 present"
fi

# tracefs and securityfs: the kernel layer reads tracepoint formats and the lockdown mode from them.
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security 2>/dev/null || true
say "ready"
