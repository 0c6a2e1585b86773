#!/usr/bin/env bash
# Install real BVLC Caffe 1.0 (CPU, OpenBLAS, pycaffe under Python 3.9) into a Debian bullseye root; safe to rerun.
#   scripts/install_caffe.sh [ROOT]
# ROOT defaults to $HARRISON_CAFFE_ROOT, else .caffe-root at the top of the repository (git-ignored).
# A complete root is only verified; a half-made one (an interrupted debootstrap) is made again; a root whose
# base system is in place but whose packages are missing gets them. The result is checked by running
# `caffe --version` and a tiny net in pycaffe through bubblewrap, as harrison runs Caffe.
# Needs: root or sudo (debootstrap, chroot), debootstrap and bubblewrap (installed with apt-get when missing),
# and access to a Debian mirror (HARRISON_DEBIAN_MIRROR, default http://deb.debian.org/debian). About 1.1 GB.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
root="${1:-${HARRISON_CAFFE_ROOT:-$repo/.caffe-root}}"
mirror="${HARRISON_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
packages=(caffe python3-caffe libopenblas0-pthread python3-h5py python3-lmdb python3-numpy python3-pil python3-yaml python3-protobuf)
blas_dir=/usr/lib/x86_64-linux-gnu/openblas-pthread

say() { printf '[install_caffe] %s\n' "$*"; }
die() { printf '[install_caffe] error: %s\n' "$*" >&2; exit 1; }
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"

host_tools() {
  local missing=()
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
  command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null 2>&1 || die "install ${missing[*]} (no apt-get here to do it)"
  say "installing host packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Packages of the root that dpkg lists as fully installed.
installed() {
  awk '/^Package: /{p=$2} /^Status: install ok installed/{print p}' "$root/var/lib/dpkg/status" 2>/dev/null
}

packages_missing() {
  local have; have="$(installed)"
  for package in "${packages[@]}"; do
    grep -qx "$package" <<<"$have" || { echo "$package"; return 0; }
  done
  return 1
}

# debootstrap finished: its work folder is gone and dpkg knows the base system.
base_complete() {
  [ -d "$root" ] && [ ! -e "$root/debootstrap" ] && [ -x "$root/usr/bin/apt-get" ] && installed | grep -qx base-files
}

make_base() {
  if [ -e "$root" ]; then
    [ -e "$root/debootstrap" ] || [ -z "$(ls -A "$root")" ] || [ -d "$root/var/lib/dpkg" ] \
      || die "$root exists and is not a Debian root; remove it or choose another ROOT"
    say "removing the half-made root $root"
    $sudo rm -rf --one-file-system "$root"
  fi
  say "debootstrap bullseye into $root (a few minutes)"
  $sudo mkdir -p "$(dirname "$root")"
  $sudo debootstrap --variant=minbase bullseye "$root" "$mirror" >/dev/null \
    || die "debootstrap failed (see $root/debootstrap/debootstrap.log); rerun this script to start again"
}

in_root() { $sudo chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }

install_packages() {
  say "installing ${packages[*]} into $root"
  local log; log="$(mktemp /tmp/install_caffe.apt.XXXXXX)"
  if ! { in_root apt-get update -qq && in_root apt-get install -y -qq --no-install-recommends "${packages[@]}"; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "apt-get failed inside $root (full output: $log); rerun this script to resume"
  fi
  rm -f "$log"
  in_root apt-get clean
}

select_openblas() {
  local name target
  for name in libblas.so.3 liblapack.so.3; do
    target="$blas_dir/$name"
    if [ "$(readlink "$root/etc/alternatives/$name-x86_64-linux-gnu" 2>/dev/null)" != "$target" ]; then
      say "selecting OpenBLAS for $name"
      in_root update-alternatives --quiet --set "$name-x86_64-linux-gnu" "$target"
    fi
  done
}

# bwrap arguments that show the root as / (read-only) with /tmp and the repository from the host.
bwrap_args() {
  args=(--die-with-parent --tmpfs /)
  for entry in "$root"/*; do
    name="$(basename "$entry")"
    case "$name" in proc|dev|sys|run|tmp) continue ;; esac
    if [ -L "$entry" ]; then args+=(--symlink "$(readlink "$entry")" "/$name")
    elif [ -d "$entry" ]; then args+=(--ro-bind "$entry" "/$name"); fi
  done
  args+=(--bind /tmp /tmp --proc /proc --dev /dev --clearenv --setenv PATH /usr/sbin:/usr/bin:/sbin:/bin
         --setenv HOME /tmp --setenv MPLCONFIGDIR /tmp --setenv GLOG_minloglevel 2)
}

verify() {
  bwrap_args
  local version
  version="$(bwrap "${args[@]}" caffe --version 2>&1)" || die "caffe --version failed in $root: $version"
  local work; work="$(mktemp -d /tmp/install_caffe.XXXXXX)"
  trap 'rm -rf "$work"' RETURN
  cat >"$work/net.prototxt" <<'NET'
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "constant" value: 1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0.5 } } }
NET
  local out
  out="$(bwrap "${args[@]}" --chdir "$work" python3 -c '
import numpy as np, caffe
caffe.set_mode_cpu()
net = caffe.Net("net.prototxt", caffe.TEST)
net.blobs["data"].data[...] = 1
fc = net.forward()["fc"]
assert np.allclose(fc, 0.5 * 4 * 36 * 27), fc
print("pycaffe forward ok")
' 2>&1)" || die "the pycaffe check failed in $root: $out"
  local blas; blas="$(readlink "$root/etc/alternatives/libblas.so.3-x86_64-linux-gnu")"
  say "ok: $version, $out, BLAS $blas, root $root ($(du -sh "$root" 2>/dev/null | cut -f1))"
}

host_tools
if base_complete && ! packages_missing >/dev/null; then
  say "$root is complete; verifying"
else
  base_complete || make_base
  install_packages
fi
select_openblas
verify
