#!/usr/bin/env bash
# Installs the Debian tools the tests use when they are missing: promtool (Prometheus) for
# rule tests and the e2e scrape, lua for the Argo CD health checks, a headless Chromium that
# renders `nhi report --format html`.
set -euo pipefail
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v lua5.4 >/dev/null || missing+=(lua5.4)
# Argo CD runs health checks in a Lua 5.1 engine; the tests also check the scripts there.
command -v lua5.1 >/dev/null || missing+=(lua5.1)
command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null \
  || missing+=(chromium-headless-shell)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "system-deps: installing ${missing[*]}" >&2
$sudo apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
  $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
# The Debian package starts a system Prometheus where it can; the tests run their own.
(systemctl stop prometheus prometheus-node-exporter 2>/dev/null || true)
