#!/bin/sh
# Build (once) or reuse the minimal Debian 12 root file system the systemd system test boots with
# systemd-nspawn. Prints the path of the cached tarball on stdout.
# The tarball is built in a temporary directory and renamed into place only when complete, so an
# interrupted build never leaves a half root behind that a later run would reuse.
# Usage: build_root.sh [CACHE_DIR]   (default /var/cache/jobpipe-systemd-test)
set -eu
cache=${1:-/var/cache/jobpipe-systemd-test}
tarball="$cache/bookworm-root.tar"
if [ -s "$tarball" ]; then
    echo "$tarball"
    exit 0
fi
mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mirror=${JOBPIPE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
debootstrap --variant=minbase --include=python3,python3-venv,systemd,systemd-sysv,dbus \
    bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    echo "debootstrap failed (is $mirror reachable?)" >&2
    exit 1
}
# Boot faster and quieter: no getty on the console, no timers that run apt or man-db.
rm -f "$work/root/etc/systemd/system/getty.target.wants/"* 2>/dev/null || true
rm -f "$work/root/var/cache/apt/archives/"*.deb
tar -C "$work/root" -cf "$work/root.tar" .
mv "$work/root.tar" "$tarball"
echo "$tarball"
