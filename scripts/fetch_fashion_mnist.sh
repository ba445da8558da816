#!/usr/bin/env bash
# Puts the Fashion-MNIST IDX files where diffsmooth looks for them, offline from the
# Debian package dataset-fashion-mnist (no root needed: apt-get download + dpkg-deb -x).
set -euo pipefail
system=/usr/share/datasets/fashion-mnist
cache="${XDG_CACHE_HOME:-$HOME/.cache}/diffsmooth/datasets/fashion-mnist"
files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
have() { for f in $files; do [ -s "$1/$f" ] || return 1; done; }
if have "$system" || have "$cache"; then exit 0; fi
command -v apt-get >/dev/null || { echo "Fashion-MNIST missing and apt-get not found: put the four IDX files into $cache" >&2; exit 2; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "fetching Fashion-MNIST from the Debian package dataset-fashion-mnist into $cache"
if ! (cd "$tmp" && apt-get download -q dataset-fashion-mnist >/dev/null 2>&1); then
    # A fresh machine may have no package lists yet.
    if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null; else sudo -n apt-get update -qq >/dev/null; fi
    (cd "$tmp" && apt-get download -q dataset-fashion-mnist >/dev/null)
fi
dpkg-deb -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/root"
mkdir -p "$cache"
for f in $files; do cp "$tmp/root$system/$f" "$cache/$f"; done
echo "Fashion-MNIST ready in $cache"
