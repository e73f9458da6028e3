#!/bin/sh
# Install the Debian packages named that are missing (quietly; sudo when not root).
set -e
missing=$(for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
[ -n "$missing" ] || exit 0
echo "installing Debian packages:" $missing
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
