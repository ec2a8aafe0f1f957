#!/usr/bin/env bash
# What the browser tests of the example apps need, installed if missing:
# Debian's chromium and chromium-driver, and the npm package axe-core (its
# axe.min.js, injected into the pages by tests/browser_kit.py).
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "installing chromium and chromium-driver (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

axe_home="${HOME}/.cache/account-merge-axe"
if [ ! -f "${axe_home}/node_modules/axe-core/axe.min.js" ]; then
    echo "installing axe-core (npm)"
    mkdir -p "${axe_home}"
    npm install --prefix "${axe_home}" --no-save --no-audit --no-fund --silent axe-core@4
fi
