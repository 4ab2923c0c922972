#!/usr/bin/env bash
# Install Debian's chromium and chromium-driver for the console's browser tests (tests/test_console.py), if missing.
# Needs root or sudo and apt-get; without them it says so and returns 0: those tests then skip, saying why.
set -euo pipefail
if command -v chromedriver >/dev/null && { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install_browser.sh: no apt-get here; install chromium and chromium-driver to run tests/test_console.py" >&2
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "install_browser.sh: not root and no sudo; run 'apt-get install -y chromium chromium-driver' as root" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! { "${SUDO[@]}" apt-get update -qq && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver; }; then
    echo "install_browser.sh: apt-get could not install chromium; tests/test_console.py will be skipped" >&2
    exit 0
fi
echo "install_browser.sh: installed $(chromium --version 2>/dev/null || echo chromium)"
