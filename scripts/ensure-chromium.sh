#!/usr/bin/env bash
# Makes sure Debian's headless Chromium is installed for the debug-page test.
# Installs it when absent and we are root; otherwise says why in one line.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-chromium: chromium is not installed and we are not root to install it" >&2
    exit 1
fi
echo "ensure-chromium: installing chromium from Debian's packages" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
