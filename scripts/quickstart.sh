#!/usr/bin/env bash
# README command (1): install whatever is missing, build the release binary, start live tracing.
# Extra arguments go to twtrace, e.g. `./scripts/quickstart.sh events --json` (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
echo "[quickstart] building twtrace (release)" >&2
cargo build --release --locked -p twtrace
# On PATH from now on (`sudo twtrace`), replaced only when this build differs.
if ! cmp -s target/release/twtrace /usr/local/sbin/twtrace; then
  echo "[quickstart] installing /usr/local/sbin/twtrace" >&2
  install -m 755 target/release/twtrace /usr/local/sbin/twtrace.new
  mv -f /usr/local/sbin/twtrace.new /usr/local/sbin/twtrace
fi
echo "[quickstart] starting: twtrace $*" >&2
exec /usr/local/sbin/twtrace "$@"
