#!/bin/sh
# Installs the peer tools the tests compare against (skopeo, umoci, docker-registry with
# Apache's htpasswd for its bcrypt password files, podman, a Docker engine: Debian's
# docker.io, with a static busybox for the images it builds) and
# the tools the crash and fault tests drive ocistore with (strace, mkfs.ext4, setpriv) from
# Debian when running as root and they are missing. Without root, tests that need a
# missing peer skip with a reason (and fail under CI=true).
set -e
missing=""
command -v skopeo >/dev/null 2>&1 || missing="$missing skopeo"
command -v umoci >/dev/null 2>&1 || missing="$missing umoci"
command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || missing="$missing docker-registry"
command -v htpasswd >/dev/null 2>&1 || missing="$missing apache2-utils"
command -v podman >/dev/null 2>&1 || missing="$missing podman"
command -v dockerd >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ] || missing="$missing docker.io"
[ -x /bin/busybox ] && ! grep -q /ld-linux /bin/busybox 2>/dev/null || missing="$missing busybox-static"
command -v ctr >/dev/null 2>&1 || missing="$missing containerd"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v zstd >/dev/null 2>&1 || missing="$missing zstd"
command -v strace >/dev/null 2>&1 || missing="$missing strace"
command -v mkfs.ext4 >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.ext4 ] || [ -x /sbin/mkfs.ext4 ] || missing="$missing e2fsprogs"
command -v setpriv >/dev/null 2>&1 || missing="$missing util-linux"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing peer tools:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
    echo "peer tools missing (not root, not installed):$missing" >&2
fi
