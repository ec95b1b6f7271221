#!/usr/bin/env bash
# build-initramfs.sh - the initramfs (and kernel) of kproxy's IPVS test VM.
#
#   tests/vm/build-initramfs.sh CACHE OUT PAYLOAD [ARG...]
#
# Prints `kernel=PATH` and `initrd=OUT` on stdout. OUT is the cached base
# archive with a per-run overlay appended: PAYLOAD (debug info stripped, plus
# the shared libraries ldd names) as /usr/local/bin/payload, run by /init as
# `payload ARG...` with KPROXY_IN_VM=1, and the files named in KPROXY_VM_BINS
# at their own paths. /init prints KPROXY_VM_READY before
# and KPROXY_VM_EXIT=<status> after the payload, then powers the VM off.
#
# Why a VM: the host kernel has no ip_vs and cannot load modules. A stock
# Debian kernel does, so the kernel package is fetched with `apt-get
# download` (never installed; /boot is not touched), unpacked into CACHE and
# booted by qemu (tests/support/vm.rs) with no network device at all.
#
# Everything comes from Debian packages that .ci/run installs: the kernel,
# busybox-static (shell, mount, modprobe), kmod (depmod), iproute2, ipvsadm,
# ipset, iptables, nftables (nft: the packet suite's unhandled responder),
# bash (ipvsadm-save is a bash script), cpio, xz-utils,
# binutils (strip, readelf), ca-certificates. Exit status 3 means a prerequisite is missing
# (the message says which); anything else non-zero is a build failure.
#
# CACHE (target/ipvs-vm) holds per kernel package the unpacked tree and the
# uncompressed vmlinux, and one base archive keyed by this script, the
# kernel and the tool versions; it is written under flock, so runs may
# overlap, and is safe to delete. Notes on what was learnt the hard way are
# marked "gotcha".
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C

die() { echo "build-initramfs: $*" >&2; exit 1; }
missing() { echo "build-initramfs: missing prerequisite: $*" >&2; exit 3; }
[ $# -ge 3 ] || die "usage: $0 CACHE OUT PAYLOAD [ARG...]"
CACHE=$1 OUT=$2 PAYLOAD=$3; shift 3
[ -f "$PAYLOAD" ] || die "no payload $PAYLOAD"
[ "$(id -u)" = 0 ] || missing "root (depmod on a scratch tree, mknod, apt-get download)"
for tool in apt-get apt-cache dpkg-deb dpkg-query depmod cpio xz strip readelf ldd busybox ip ipvsadm ipset \
            xtables-nft-multi bash nft; do
  command -v "$tool" >/dev/null || missing "$tool (bash .ci/run installs it)"
done
# gotcha: Debian's plain `busybox` is dynamic; the image wants busybox-static.
{ ldd "$(command -v busybox)" 2>&1 || true; } | grep -q 'not a dynamic' || missing "busybox-static (found a dynamic busybox)"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

# Modules packed into the image: IPVS with kube-proxy's schedulers, all of
# netfilter (iptables/ipset rules find their module through the kernel's
# autoloader) and the link types the tests build. Dependencies, softdeps and
# aliases are followed below.
MODULES=(kernel/net/netfilter/ kernel/net/ipv4/netfilter/ kernel/net/ipv6/netfilter/
  bridge br_netfilter dummy veth)
# Loaded by /init before the payload (the rest load on demand).
PRELOAD="ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_sh ip_vs_mh nf_conntrack dummy veth bridge br_netfilter"

# ------------------------------------------------------------------ kernel
KPKG=${KPROXY_VM_KERNEL_PKG:-}
if [ -z "$KPKG" ]; then
  KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
  [ -n "$KPKG" ] || missing "a linux-image-amd64 candidate (apt-get update?)"
fi
KDIR=$CACHE/kernel/$KPKG
if [ ! -e "$KDIR/.ready" ]; then
  echo "build-initramfs: fetching $KPKG" >&2
  rm -rf "$CACHE/kernel"; mkdir -p "$KDIR/deb"   # one kernel at a time (~450 MB unpacked)
  chmod 777 "$KDIR/deb"   # apt-get download drops privileges to _apt
  (cd "$KDIR/deb" && apt-get download -qq "$KPKG") || missing "apt-get download $KPKG"
  dpkg-deb -x "$KDIR"/deb/*.deb "$KDIR/root"
  rm -rf "$KDIR/deb"
  [ -d "$KDIR/root/lib/modules" ] || ln -s usr/lib "$KDIR/root/lib"
  kver=$(ls "$KDIR/root/lib/modules")
  # gotcha: the .deb ships no modules.dep (postinst runs depmod).
  depmod -b "$KDIR/root" "$kver"
  # gotcha: under TCG, SeaBIOS and the in-guest decompressor cost ~3 s, so
  # boot the uncompressed vmlinux through its PVH entry note instead.
  img=$(ls "$KDIR"/root/boot/vmlinuz-*)
  off=$(grep -obUaP '\xfd7zXZ\x00' "$img" | head -n1 | cut -d: -f1)
  [ -n "$off" ] || die "$img: no xz payload"
  tail -c +$((off + 1)) "$img" | xz -dc --single-stream > "$KDIR/vmlinux" 2>/dev/null || true
  readelf -n "$KDIR/vmlinux" | grep -q 'Xen.*0x00000012' || die "$KDIR/vmlinux: no PVH entry note"
  echo "$kver" > "$KDIR/.ready"
fi
KVER=$(cat "$KDIR/.ready")
KMOD=$KDIR/root/lib/modules/$KVER

# ------------------------------------------------------------- helpers
make_cpio() {  # make_cpio DIR OUT: sorted, mtime 0, root-owned (reproducible)
  find "$1" -exec touch -h -d @0 {} +
  (cd "$1" && find . -mindepth 1 -print0 | sort -z \
     | cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) > "$2"
}
copy_libs() {  # copy_libs ROOT SKIP ELF...: the libraries ldd names, unless SKIP has them
  local root=$1 skip=$2 lib; shift 2
  { ldd "$@" 2>/dev/null || true; } \
    | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $1 !~ /:$/ {print $1}' | sort -u \
    | while read -r lib; do
        [ -e "$root$lib" ] || [ -e "$skip$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"
      done
}
usr_merge() {  # the host's /bin -> usr/bin layout, so ldd's paths copy verbatim
  mkdir -p "$1"/usr/{bin,sbin,lib,lib64}
  for d in bin sbin lib lib64; do ln -sfn usr/$d "$1/$d"; done
}

# ---------------------------------------------------------- base image
KEY=$( { cat "$0"; echo "$KPKG $KVER";
  dpkg-query -W busybox-static ipvsadm ipset iptables iproute2 bash libc6 conntrack nftables 2>/dev/null || true
} | sha256sum | cut -c1-16)
BASE=$CACHE/base-$KEY
if [ ! -e "$BASE/.ready" ]; then
  echo "build-initramfs: building base image $KEY" >&2
  rm -rf "$CACHE"/base-*
  R=$BASE/root
  usr_merge "$R"
  mkdir -p "$R"/{proc,sys,dev,run,tmp,root,etc,var,usr/local/bin}
  ln -s ../run "$R/var/run"
  mknod -m 600 "$R/dev/console" c 5 1   # PID 1's stdio, before devtmpfs
  mknod -m 666 "$R/dev/null" c 1 3

  for t in ip ipvsadm ipvsadm-save ipset bash xtables-nft-multi xtables-legacy-multi conntrack nft; do
    src=$(command -v "$t" 2>/dev/null) || continue
    src=$(readlink -f "$src")
    mkdir -p "$R$(dirname "$src")"; cp -L "$src" "$R$src"
    copy_libs "$R" /nonexistent "$src"
  done
  # iptables & co. are argv[0] names of the xtables multi-binaries.
  for n in /usr/sbin/{iptables,ip6tables}*; do
    t=$(basename "$(readlink -f "$n")")
    case $t in xtables-*-multi) ln -sf "$t" "$R/usr/sbin/$(basename "$n")" ;; esac
  done
  # gotcha: libxtables dlopen()s its extensions, which ldd cannot see.
  XT=/usr/lib/x86_64-linux-gnu/xtables
  mkdir -p "$R$XT"; cp -L "$XT"/*.so "$R$XT/"; copy_libs "$R" /nonexistent "$XT"/*.so
  for f in /etc/protocols /etc/services; do cp -L "$f" "$R$f"; done
  # kproxy's API client loads the system CA store even for plain http.
  CA=/etc/ssl/certs/ca-certificates.crt
  [ -f "$CA" ] || missing "$CA (ca-certificates)"
  mkdir -p "$R/etc/ssl/certs"; cp -L "$CA" "$R$CA"
  printf 'passwd: files\ngroup: files\nhosts: files\nprotocols: files\nservices: files\n' > "$R/etc/nsswitch.conf"
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$R/etc/passwd"
  printf 'root:x:0:\n' > "$R/etc/group"
  echo "127.0.0.1 localhost" > "$R/etc/hosts"

  # gotcha: the kernel autoloads modules through /sbin/modprobe, so every
  # busybox applet goes where `busybox --list-full` says, never over a real tool.
  cp "$(command -v busybox)" "$R/usr/bin/busybox"
  for a in $(busybox --list-full); do
    case $a in */*) ;; *) continue ;; esac
    n=${a##*/} d=${a%/*}; d=usr/${d##*/}
    [ -e "$R/usr/bin/$n" ] || [ -e "$R/usr/sbin/$n" ] || [ -L "$R/usr/sbin/$n" ] || ln -s /usr/bin/busybox "$R/$d/$n"
  done

  # Module closure over modules.dep, modules.softdep and modules.alias
  # (gotcha: libcrc32c needs the crc32c crypto module, which only a softdep
  # names through an alias), decompressed, then depmod'ed in the image.
  sel=$(printf '%s\n' "${MODULES[@]}" $PRELOAD)
  awk -v sel="$sel" '
    function norm(x) { gsub(/-/, "_", x); return x }
    function base(p,  b) { b = p; sub(/.*\//, "", b); sub(/\.ko(\.(xz|zst|gz))?$/, "", b); return norm(b) }
    function want(p) { if (!(p in got)) { got[p] = 1; queue[++qn] = p } }
    function want_name(n,  k, a, i) {
      n = norm(n)
      if (n in path) { want(path[n]); return }
      if (n in alias) { k = split(alias[n], a, " "); for (i = 1; i <= k; i++) if (a[i] in path) want(path[a[i]]) }
    }
    FILENAME ~ /alias$/   { if ($1 == "alias") alias[norm($2)] = alias[norm($2)] " " norm($3); next }
    FILENAME ~ /softdep$/ { if ($1 == "softdep") for (i = 3; i <= NF; i++) if ($i !~ /:$/) soft[norm($2)] = soft[norm($2)] " " $i; next }
    { m = $1; sub(/:$/, "", m); path[base(m)] = m; mods[++nm] = m; d = ""; for (j = 2; j <= NF; j++) d = d " " $j; deps[m] = d }
    END {
      n = split(sel, s, "\n")
      for (i = 1; i <= n; i++) {
        if (s[i] ~ /\/$/) { for (j = 1; j <= nm; j++) if (index(mods[j], s[i]) == 1) want(mods[j]) }
        else want_name(s[i])
      }
      for (q = 1; q <= qn; q++) {
        p = queue[q]; print p
        k = split(deps[p], a, " "); for (i = 1; i <= k; i++) want(a[i])
        b = base(p); if (b in soft) { k = split(soft[b], a, " "); for (i = 1; i <= k; i++) want_name(a[i]) }
      }
    }' "$KMOD/modules.alias" "$KMOD/modules.softdep" "$KMOD/modules.dep" | sort -u > "$BASE/modules.list"
  for m in ip_vs dummy br_netfilter; do grep -q "/$m\.ko" "$BASE/modules.list" || die "$KPKG has no $m module"; done
  while read -r m; do
    mkdir -p "$R/lib/modules/$KVER/$(dirname "$m")"
    case $m in
      *.ko.xz) xz -dc "$KMOD/$m" > "$R/lib/modules/$KVER/${m%.xz}" ;;
      *) cp "$KMOD/$m" "$R/lib/modules/$KVER/$m" ;;
    esac
  done < "$BASE/modules.list"
  cp "$KMOD"/modules.{order,builtin,builtin.modinfo} "$R/lib/modules/$KVER/" 2>/dev/null || true
  depmod -b "$R" "$KVER"

  cat > "$R/init" <<INIT
#!/bin/sh
export PATH=/usr/local/bin:/usr/sbin:/usr/bin HOME=/root KPROXY_IN_VM=1
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
echo /sbin/modprobe > /proc/sys/kernel/modprobe
for m in $PRELOAD; do modprobe "\$m" || echo "KPROXY_VM_WARN modprobe \$m failed"; done
ip link set lo up
echo "KPROXY_VM_READY uptime=\$(cut -d' ' -f1 /proc/uptime) kernel=\$(uname -r)"
cd /root
sh /etc/payload.cmd
echo "KPROXY_VM_EXIT=\$? uptime=\$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
INIT
  chmod 0755 "$R/init"
  make_cpio "$R" "$BASE/base.cpio"
  touch "$BASE/.ready"
fi

# -------------------------------------------------------------- overlay
# gotcha: the overlay must carry the same /lib -> usr/lib symlinks as the
# base, or the kernel's unpacker replaces them with empty directories.
WORK=$(mktemp -d "$CACHE/run.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
O=$WORK/root
usr_merge "$O"
mkdir -p "$O/etc" "$O/usr/local/bin"
strip --strip-debug -o "$O/usr/local/bin/payload" "$PAYLOAD"
copy_libs "$O" "$BASE/root" "$PAYLOAD"
# KPROXY_VM_BINS: more executables, space-separated, each at its own
# absolute path (so a test can run e.g. target/debug/kproxy by the path
# Cargo gave it).
for b in ${KPROXY_VM_BINS:-}; do
  [ -f "$b" ] || die "KPROXY_VM_BINS: no file $b"
  mkdir -p "$O$(dirname "$b")"
  strip --strip-debug -o "$O$b" "$b"
  copy_libs "$O" "$BASE/root" "$b"
done
{ printf 'exec /usr/local/bin/payload'; [ $# -eq 0 ] || printf ' %q' "$@"; echo; } > "$O/etc/payload.cmd"
make_cpio "$O" "$WORK/overlay.cpio"
cat "$BASE/base.cpio" "$WORK/overlay.cpio" > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "kernel=$KDIR/vmlinux"
echo "initrd=$OUT"
