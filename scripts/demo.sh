#!/bin/sh
# The main job on the default store (--root, else $OCISTORE_ROOT, else
# ${XDG_DATA_HOME:-~/.local/share}/ocistore): import a small image, tag it, list it,
# inspect it and show its history; then save it as an oci-archive, remove it, and load it
# back with the same ID; unpack it, change a file, commit the change as a new image and
# show its diff; serve the store as a registry and read it back through it; with
# Debian's docker-registry installed, push it to one started here on
# 127.0.0.1 and pull it back.
set -e
cd "$(dirname "$0")/.."
OCISTORE=".venv/bin/ocistore"
work=$(mktemp -d)
registry_pid=""
serve_pid=""
trap '[ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null; [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null; rm -rf "$work"' EXIT

# A small root file system made of real files from this machine.
mkdir -p "$work/rootfs/etc" "$work/rootfs/bin"
cp /etc/os-release "$work/rootfs/etc/"
cp /bin/sh "$work/rootfs/bin/"
ln -s sh "$work/rootfs/bin/dash-link"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/rootfs" -czf "$work/rootfs.tar.gz" .

# An earlier run's demo image goes first, so runs do not pile up.
$OCISTORE rmi demo/minimal:v1 demo/minimal:latest demo/minimal:motd >/dev/null 2>&1 || true

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
$OCISTORE unpack --rootless --bundle demo/minimal:v1 "$work/bundle"
ls "$work/bundle" "$work/bundle/rootfs"
echo "hello from ocistore" > "$work/bundle/rootfs/etc/motd"
$OCISTORE commit "$work/bundle" -t demo/minimal:motd -m "a motd"
$OCISTORE diff demo/minimal:motd
$OCISTORE history demo/minimal:motd
$OCISTORE export demo/minimal:motd -o "$work/motd.tar"
tar -tvf "$work/motd.tar"
$OCISTORE system df
$OCISTORE fsck -q
set +x

# The store served as a registry on 127.0.0.1 (a free port), and read back through it.
$OCISTORE serve --addr 127.0.0.1:0 --quiet >"$work/serve.out" 2>"$work/serve.err" &
serve_pid=$!
until grep -q '^serving on ' "$work/serve.out" 2>/dev/null; do
    kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.err"; exit 1; }
    sleep 0.1
done
served=$(sed -n 's|^serving on http://||p' "$work/serve.out")
set -x
$OCISTORE tags "$served/demo/minimal"
$OCISTORE inspect --remote "$served/demo/minimal:motd"
.venv/bin/python -c "import urllib.request; print(urllib.request.urlopen('http://$served/v2/_catalog').read().decode())"
set +x
kill "$serve_pid"
serve_pid=""

# A registry of the demo's own, on 127.0.0.1 (plain HTTP: a loopback registry).
registry=/usr/bin/docker-registry
[ -x "$registry" ] || registry=$(command -v docker-registry || true)
if [ -z "$registry" ]; then
    echo "(docker-registry is not installed: make test installs it as root; no push and pull shown)"
    exit 0
fi
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<EOF
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port}
EOF
"$registry" serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
tries=0
until .venv/bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/v2/')" 2>/dev/null; do
    tries=$((tries + 1))
    [ $tries -lt 100 ] || { cat "$work/registry.log"; exit 1; }
    sleep 0.1
done
set -x
$OCISTORE tag demo/minimal:v1 127.0.0.1:$port/demo/minimal:v1
$OCISTORE push 127.0.0.1:$port/demo/minimal:v1
$OCISTORE rmi 127.0.0.1:$port/demo/minimal:v1
$OCISTORE pull 127.0.0.1:$port/demo/minimal:v1
$OCISTORE images --digests
$OCISTORE tags 127.0.0.1:$port/demo/minimal
$OCISTORE inspect --remote 127.0.0.1:$port/demo/minimal:v1
$OCISTORE rmi 127.0.0.1:$port/demo/minimal:v1
set +x
