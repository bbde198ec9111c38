#!/usr/bin/env bash
# Installs the pinned nisshi broker into a cache once and prints its path.
#
# Order: the cache (never rebuilt when present), then the prebuilt binary in
# ../shared/tools when its checksum matches, then `cargo install` (about 40
# minutes on 2 cores; cargo shows its progress).
set -euo pipefail

version=0.8.1
root="${HERALD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/herald}/nisshi-$version"
bin="$root/bin/nisshi"
here="$(cd "$(dirname "$0")/.." && pwd)"
prebuilt="${HERALD_NISSHI_PREBUILT:-$here/../shared/tools/nisshi-$version-x86_64-linux-gnu.gz}"

if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi
mkdir -p "$root/bin"

if [ -f "$prebuilt" ] && [ -f "$prebuilt.sha256" ] && [ "$(uname -m)" = x86_64 ]; then
  want=$(awk '{print $1}' "$prebuilt.sha256")
  have=$(sha256sum "$prebuilt" | awk '{print $1}')
  if [ "$want" = "$have" ]; then
    echo "nisshi $version: unpacking the prebuilt binary (checksum ok)" >&2
    gunzip -c "$prebuilt" > "$bin.tmp"
    chmod +x "$bin.tmp"
    if "$bin.tmp" --version >/dev/null 2>&1; then
      mv "$bin.tmp" "$bin"
      echo "$bin"
      exit 0
    fi
    echo "nisshi $version: the prebuilt binary does not run here; building instead" >&2
    rm -f "$bin.tmp"
  else
    echo "nisshi $version: prebuilt checksum mismatch; building instead" >&2
  fi
fi

echo "nisshi $version: building with cargo install (about 40 minutes on 2 cores)" >&2
cargo install "nisshi@$version" --locked --ignore-rust-version --root "$root" >&2
echo "$bin"
