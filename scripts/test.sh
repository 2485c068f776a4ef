#!/usr/bin/env bash
# README command (2), and what CI runs (.ci/run): install what is missing, then the whole suite:
# format and lint checks, unit tests, end-to-end tests on this kernel (real eBPF, real netns
# traffic, compared with the kernel's counters), and the same end-to-end suite inside stock
# Debian 5.10, 6.1 and 6.12 kernels under QEMU, with automatic hook choice (fentry there), with
# kprobes forced, (6.1, 6.12) with tp_btf forced, and (6.1) with classic tracepoints forced.
# Nothing is skipped: a failure anywhere fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
TWTRACE_WITH_VM=1 ./scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
step() { printf '\n[test] === %s (%s) ===\n' "$*" "$(date -u +%H:%M:%S)" >&2; }

step "build"
cargo build --locked --workspace --exclude twtrace-ebpf --all-targets

step "format and lint"
# rustfmt and clippy: rustup's, or Debian's rustfmt-web and rust-web-clippy (setup installs them
# where rustup's are missing). Never skipped.
cargo fmt --all -- --check
cargo clippy --locked --workspace --exclude twtrace-ebpf --all-targets -- -D warnings

step "unit and end-to-end tests on $(uname -r) (automatic hook choice: tp_btf here)"
TWTRACE_EXPECT_FAMILY="${TWTRACE_HOST_FAMILY:-tp_btf}" cargo test --locked --workspace --exclude twtrace-ebpf

step "end-to-end tests on $(uname -r) with classic tracepoints forced"
TWTRACE_HOOKS=tracepoint TWTRACE_EXPECT_FAMILY=tracepoint \
  cargo test --locked -p twtrace --test e2e --test paws --test cli

step "end-to-end tests in stock kernels under QEMU"
cargo xtask vm-test --release --kernel all --hooks auto
cargo xtask vm-test --release --kernel all --hooks kprobe
cargo xtask vm-test --release --kernel 6.1,6.12 --hooks tp_btf
# tp_btf before drop reasons (5.17): tw_exit partial (reset kills read `unknown`, announced);
# PAWS needs drop reasons on this route, so that signal and its tests stay out.
cargo xtask vm-test --release --kernel 5.10 --hooks tp_btf \
  --signals tw_enter,tw_exit,syn,tw_overflow,connect_eaddrnotavail \
  -- --skip timewait_old_syn --skip established_old --skip nat_clients --skip dual_stack \
  --skip request_socket --skip syn_sent
# Classic tracepoints before 6.10 (partial tw_exit, announced); they cannot serve PAWS at
# TIME-WAIT there (kfree_skb names no socket before 6.11), so that signal and its tests stay out.
cargo xtask vm-test --release --kernel 6.1 --hooks tracepoint \
  --signals tw_enter,tw_exit,syn,tw_overflow,connect_eaddrnotavail \
  -- --skip timewait_old_syn --skip established_old --skip nat_clients --skip dual_stack \
  --skip request_socket --skip syn_sent

step "all green"
