#!/usr/bin/env bash
# Makes sure Debian's headless Chromium is installed for the debug-page test.
# Installs it when absent and we are root; otherwise says why in one line.
set -euo pipefail
# shellcheck source=scripts/debian-install.sh
. "$(dirname "$0")/debian-install.sh"
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
debian_install ensure-chromium chromium chromium
