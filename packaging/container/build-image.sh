#!/bin/bash
# Builds the container image localhost/ctune:<version> from scratch with buildah: the
# release binary (stripped) and the shared libraries it links, copied from this host as
# ldd resolves them (glibc, libgcc_s, the dynamic loader), plus the empty directories
# ctune expects. No base image is pulled. The image is reproducible: every timestamp
# is SOURCE_DATE_EPOCH (default: the last commit's time).
#
# Usage: packaging/container/build-image.sh [--no-build] [--oci-archive FILE]
#   --no-build           use the existing target/release/ctune
#   --oci-archive FILE   also write the image to FILE (an OCI archive: load it with
#                        `podman load -i FILE`, or `ctr -n k8s.io images import FILE` on a
#                        containerd node)
# Prints the image's name on stdout; everything else on stderr. buildah's storage is
# the caller's (CONTAINERS_STORAGE_CONF chooses another, as the container test does).
set -euo pipefail
cd "$(dirname "$0")/../.."

build=1 archive=
while [ $# -gt 0 ]; do
  case $1 in
    --no-build) build=0 ;;
    --oci-archive) archive=${2:?--oci-archive needs a file}; shift ;;
    *) echo "build-image: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
command -v buildah >/dev/null || { echo "build-image: buildah missing: apt-get install buildah" >&2; exit 1; }
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH LC_ALL=C TZ=UTC
umask 022

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image=localhost/ctune:$version
[ "$build" = 1 ] && cargo build --release --locked -p ctune --bin ctune >&2
bin=target/release/ctune
[ -x "$bin" ] || { echo "build-image: $bin missing (build it or drop --no-build)" >&2; exit 1; }

ctx=target/container
rm -rf "$ctx"
mkdir -p "$ctx/rootfs/usr/bin" "$ctx/rootfs/etc/ctune" "$ctx/rootfs/var/lib/ctune" "$ctx/rootfs/run"
install -m 755 "$bin" "$ctx/rootfs/usr/bin/ctune"
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$ctx/rootfs/usr/bin/ctune"
# Each library at the path the binary's loader looks for it ("name => path", or the
# loader's own absolute path); -L: the file, not the distribution's symlink to it.
libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
[ -n "$libs" ] || { echo "build-image: ldd found no libraries in $bin" >&2; exit 1; }
for lib in $libs; do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
  chmod 755 "$ctx/rootfs$lib"
done
cp packaging/container/Containerfile "$ctx/"
find "$ctx" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

buildah build --quiet --layers=false --timestamp "$SOURCE_DATE_EPOCH" \
  --build-arg "VERSION=$version" -t "$image" -f "$ctx/Containerfile" "$ctx" >&2
if [ -n "$archive" ]; then
  rm -f "$archive"
  buildah push --quiet "$image" "oci-archive:$archive:$image" >&2
fi
echo "$image"
