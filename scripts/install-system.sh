#!/bin/sh
# `make install` / `make uninstall`: put fusegw where the system looks for it, or take it away.
#   scripts/install-system.sh install|uninstall
# From the Makefile's environment: BIN (the venv's bin directory, absolute), SBINDIR, UNITDIR,
# TMPFILESDIR.
#
# - $SBINDIR/fusegw and $SBINDIR/fusegw-mountd link to the venv's entry points. The default,
#   /usr/local/sbin, is on the PATH /bin/sh gives itself when it has none (dash and bash
#   alike): mount.fuse3 runs `fusegw SOURCE MOUNTPOINT -o OPTIONS` through /bin/sh, with no
#   PATH under `env -i`. systemd's PATH (mount units, services) and sudo's have it too.
# - mount(8) needs nothing new: for type fuse.fusegw it tries /sbin/mount.fuse.fusegw, then
#   runs /sbin/mount.fuse (fuse3's link to mount.fuse3; /sbin is /usr/sbin on Debian 12, 13).
# - The units and the tmpfiles.d file go where systemd finds those of locally installed
#   software; /etc/systemd/system stays the operator's, for overrides.
#
# Idempotent: what is already as wanted is not touched, so a second install changes nothing.
# Uninstall removes only links that point into this tree and files with the content install
# gives them; an operator's edited copy stays, and is named.
set -eu

: "${BIN:?}" "${SBINDIR:?}" "${UNITDIR:?}" "${TMPFILESDIR:?}"
HERE=$(cd "$(dirname "$0")/.." && pwd)
PROGRAMS="fusegw fusegw-mountd"

# The unit files name /usr/local/sbin; installed elsewhere, they name the SBINDIR used.
render() {
    sed "s|/usr/local/sbin/|$SBINDIR/|g" "$HERE/$1"
}

# Each file installed: source in the tree, destination.
files() {
    echo "systemd/fusegw-mountd.service $UNITDIR/fusegw-mountd.service"
    echo "systemd/fusegw@.service $UNITDIR/fusegw@.service"
    echo "systemd/fusegw.tmpfiles $TMPFILESDIR/fusegw.conf"
}

# Is systemd running this machine (sd_booted(3)) and reading these units? Then tell it; an
# install into other directories (a test's) leaves the running systemd alone.
systemd_reads_units() {
    [ -d /run/systemd/system ] && systemd-analyze unit-paths | grep -qxF "$UNITDIR"
}
systemd_reads_tmpfiles() {
    [ -d /run/systemd/system ] && systemd-tmpfiles --cat-config | grep -qxF "# $1"
}

install_all() {
    mkdir -p "$SBINDIR"
    for p in $PROGRAMS; do
        target=$BIN/$p link=$SBINDIR/$p
        [ -x "$target" ] || { echo "install: $target is missing" >&2; exit 1; }
        if [ -L "$link" ] && [ "$(readlink "$link")" = "$target" ]; then
            continue
        fi
        if [ -e "$link" ] && [ ! -L "$link" ]; then
            echo "install: $link exists and is not a link; not replacing it" >&2
            exit 1
        fi
        ln -sfn "$target" "$link"
        echo "linked $link -> $target"
    done
    files | while read -r src dest; do
        tmp=$(mktemp)
        render "$src" >"$tmp"
        if cmp -s "$tmp" "$dest"; then
            rm -f "$tmp"
            continue
        fi
        install -D -m 0644 "$tmp" "$dest"
        rm -f "$tmp"
        echo "installed $dest"
        case $dest in
            # /run/fusegw now, as at the next boot
            *.conf) if systemd_reads_tmpfiles "$dest"; then systemd-tmpfiles --create "$dest"; fi ;;
            *) echo unit >>"$changes" ;;
        esac
    done
}

uninstall_all() {
    for p in $PROGRAMS; do
        link=$SBINDIR/$p
        if [ -L "$link" ] && [ "$(readlink "$link")" = "$BIN/$p" ]; then
            rm -f "$link"
            echo "removed $link"
        fi
    done
    files | while read -r src dest; do
        [ -e "$dest" ] || continue
        if render "$src" | cmp -s - "$dest"; then
            rm -f "$dest"
            echo "removed $dest"
            case $dest in *.service) echo unit >>"$changes" ;; esac
        else
            echo "uninstall: $dest differs from what install put there; left as it is" >&2
        fi
    done
}

# The loops above run in subshells (pipes): they note changed units in a file.
changes=$(mktemp)
trap 'rm -f "$changes"' EXIT
case ${1:-} in
    install) install_all ;;
    uninstall) uninstall_all ;;
    *) echo "usage: $0 install|uninstall" >&2; exit 2 ;;
esac
# Only tell a running systemd; nothing is enabled or started.
if [ -s "$changes" ] && systemd_reads_units; then
    systemctl daemon-reload
fi
