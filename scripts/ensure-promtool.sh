#!/usr/bin/env bash
# Makes sure `promtool` (Prometheus' rule checker) is on the PATH, for the
# alert-rule tests in tests/unit/test_alerting.py. Installs Debian's
# `prometheus` package, which ships it, when it is absent and we are root.
# Exits non-zero with one clear line otherwise. Installing the package only
# puts the binaries in place: this script never starts a Prometheus server
# (Debian's package may start its own service where systemd runs; nothing of
# ours depends on it).
set -euo pipefail
# shellcheck source=scripts/debian-install.sh
. "$(dirname "$0")/debian-install.sh"

if command -v promtool >/dev/null 2>&1; then
    exit 0
fi

debian_install ensure-promtool promtool prometheus --no-install-recommends

if ! command -v promtool >/dev/null 2>&1; then
    echo "ensure-promtool: the prometheus package is installed but promtool is not on the PATH" >&2
    exit 1
fi
