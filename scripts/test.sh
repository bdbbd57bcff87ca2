#!/usr/bin/env bash
# Every check and test of the project, from a fresh Debian machine: installs what the tests need, then runs
# formatting, lints, the unit, property and integration tests, the schema fuzz run, the Windows build check and
# the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# A one-off build gains nothing from incremental caches, which would double the size of the target folder.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# The Windows check compiles bundled SQLite with MinGW.
if ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-mingw-w64-x86-64 >/dev/null
fi
rustup target list --installed | grep -qx x86_64-pc-windows-gnu || rustup target add x86_64-pc-windows-gnu
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build -p testkit (the fake ComfyUI program the service tests supervise)"
cargo build --locked -p testkit --bin fake-comfyui
echo "== PostgreSQL for the tests (a throwaway cluster: the store's tests run on it as well as on SQLite)"
source scripts/postgres.sh
start_test_postgres
echo "== cargo test"
cargo test --workspace --locked
echo "== cargo test --test it, every app's store on PostgreSQL"
TEST_STORE=postgres cargo test --locked --test it
echo "== schema fuzz (schemathesis against the real server and the fakes)"
if [ ! -x .venv-fuzz/bin/st ]; then
  python3 -m venv .venv-fuzz 2>/dev/null || {
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null
    python3 -m venv .venv-fuzz
  }
  .venv-fuzz/bin/pip install -q --no-cache-dir --disable-pip-version-check schemathesis==4.32.5
fi
SCHEMATHESIS="$PWD/.venv-fuzz/bin/st" cargo test --locked --test it -- --ignored --nocapture fuzz_the_api_against_its_schema
echo "== the official Comfy API v2 SDK (comfy-sdk from PyPI) against the real server"
echo "   (disk free for it: $(df -h --output=avail . | tail -1 | tr -d ' '), the target folder: $(du -sh target | cut -f1))"
if [ ! -x .venv-sdk/bin/python ] || ! .venv-sdk/bin/python -c 'import comfy_sdk' 2>/dev/null; then
  python3 -m venv .venv-sdk
  .venv-sdk/bin/pip install -q --no-cache-dir --disable-pip-version-check comfy-sdk==0.5.0
fi
COMFY_SDK_PYTHON="$PWD/.venv-sdk/bin/python" cargo test --locked --test it -- --ignored --nocapture the_official_sdk
echo "== cargo check --target x86_64-pc-windows-gnu"
cargo check --locked --target x86_64-pc-windows-gnu
echo "== browser tests (e2e/, Playwright with Debian's Chromium)"
scripts/e2e.sh
