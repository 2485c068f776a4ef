#!/usr/bin/env bash
# README command (1): install whatever is missing, build the release binary, start live tracing.
# Extra arguments go to twtrace, e.g. `sudo ./scripts/quickstart.sh events --json`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
echo "[quickstart] building twtrace (release)" >&2
cargo build --release --locked -p twtrace
echo "[quickstart] starting: ./target/release/twtrace $*" >&2
exec ./target/release/twtrace "$@"
