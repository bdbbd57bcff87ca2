#!/usr/bin/env bash
# The browser tests (e2e/, Playwright with Debian's Chromium), from a fresh Debian machine: installs Chromium and
# Node.js if missing, the npm packages (never a browser download), builds the binaries with the test doubles,
# then runs the suite. Extra arguments go to `playwright test`, e.g. `scripts/e2e.sh 00-visual --update-snapshots=all` or
# `scripts/e2e.sh i18n`.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=false
apt_install() {
  if [ "$apt_updated" = false ]; then
    as_root apt-get update -qq
    apt_updated=true
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium"
  apt_install chromium
fi
if ! command -v npm >/dev/null; then
  echo "== installing nodejs and npm"
  apt_install nodejs npm
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "Playwright needs Node.js 20 or newer; this machine has $(node --version)" >&2
  exit 1
fi

echo "== npm ci (e2e)"
(cd e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)

echo "== cargo build --features testkit --bins"
cargo build --features testkit --bins

echo "== playwright test"
cd e2e
exec npx playwright test "$@"
