#!/usr/bin/env bash
# The browser tests (e2e/, Playwright with Debian's Chromium), from a fresh Debian machine: installs Chromium and
# Node.js if missing, the npm packages (never a browser download), ComfyUI's frontend (PyPI
# comfyui-frontend-package, the version ComfyUI 0.3.64 pins) into .venv-frontend, builds the binaries with the test
# doubles, then runs the suite. Extra arguments go to `playwright test`, e.g. `scripts/e2e.sh 00-visual --update-snapshots=all` or
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

# The version ComfyUI 0.3.64 requires (`required_frontend_version` in its /system_stats).
frontend_version=1.27.10
if ! .venv-frontend/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('comfyui-frontend-package') != '$frontend_version')" 2>/dev/null; then
  echo "== installing comfyui-frontend-package==$frontend_version into .venv-frontend"
  if ! command -v python3 >/dev/null; then
    apt_install python3 python3-venv
  fi
  # A missing or broken venv (e.g. from another Python) is made anew.
  if ! .venv-frontend/bin/python -c '' 2>/dev/null; then
    rm -rf .venv-frontend
    python3 -m venv .venv-frontend 2>/dev/null || {
      rm -rf .venv-frontend
      apt_install python3-venv python3-pip
      python3 -m venv .venv-frontend
    }
  fi
  .venv-frontend/bin/pip install -q --no-cache-dir --disable-pip-version-check "comfyui-frontend-package==$frontend_version"
fi
# Git ignores the folder from inside, as newer Pythons' venv does.
[ -f .venv-frontend/.gitignore ] || echo '*' > .venv-frontend/.gitignore
COMFY_FRONTEND_ROOT="$(.venv-frontend/bin/python -c 'import comfyui_frontend_package, os; print(os.path.join(os.path.dirname(comfyui_frontend_package.__file__), "static"))')"
export COMFY_FRONTEND_ROOT

echo "== npm ci (e2e)"
(cd e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)

echo "== cargo build --workspace --bins"
cargo build --workspace --bins

echo "== playwright test"
cd e2e
exec npx playwright test "$@"
