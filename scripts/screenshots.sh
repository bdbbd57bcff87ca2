#!/usr/bin/env bash
# The README's screenshots from a real run (docs/screenshots/*.png): the fake ComfyUI's pictures and previews behind
# an Orchestrator of the run's own, jobs in several states, one running. Separate from the visual tests' masked
# baselines (e2e/tests/__screenshots__). Needs what scripts/e2e.sh installs (Chromium, the e2e npm packages).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
if [ ! -d e2e/node_modules ]; then
  (cd e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
cd e2e
exec npx playwright test -c screenshots.config.ts "$@"
