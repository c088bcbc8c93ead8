#!/bin/sh
# The main job on the default store (--root, else $OCISTORE_ROOT, else
# ${XDG_DATA_HOME:-~/.local/share}/ocistore): import a small image, tag it, list it,
# inspect it and show its history; then save it as an oci-archive, remove it, and load it
# back with the same ID.
set -e
cd "$(dirname "$0")/.."
OCISTORE=".venv/bin/ocistore"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A small root file system made of real files from this machine.
mkdir -p "$work/rootfs/etc" "$work/rootfs/bin"
cp /etc/os-release "$work/rootfs/etc/"
cp /bin/sh "$work/rootfs/bin/"
ln -s sh "$work/rootfs/bin/dash-link"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/rootfs" -czf "$work/rootfs.tar.gz" .

# An earlier run's demo image goes first, so runs do not pile up.
$OCISTORE rmi demo/minimal:v1 demo/minimal:latest >/dev/null 2>&1 || true

set -x
$OCISTORE import "$work/rootfs.tar.gz" demo/minimal:v1
$OCISTORE tag demo/minimal:v1 demo/minimal:latest
$OCISTORE images
$OCISTORE inspect demo/minimal:latest
$OCISTORE history demo/minimal:v1
$OCISTORE save --format oci-archive -o "$work/minimal.oci.tar" demo/minimal:v1
$OCISTORE rmi demo/minimal:v1 demo/minimal:latest
$OCISTORE load -i "$work/minimal.oci.tar"
$OCISTORE tag demo/minimal:v1 demo/minimal:latest
$OCISTORE images demo/minimal
$OCISTORE system df
$OCISTORE fsck -q
