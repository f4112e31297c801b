#!/bin/busybox sh
# overlaylab guest init: PID 1 of the lab initramfs (see overlaylab/vm/initramfs.py).
#
# 1. proc/sys/devtmpfs; insmod /modules/*.ko: order.boot now, order.lab in the background;
#    order.ondemand (xfs, btrfs) is left to the kernel's own request at their first mount
#    (see ON_DEMAND_MODULES in initramfs.py), or loaded too where that request has no modprobe
# 2. the run's config share (9p tag "labcfg", read-only) on /cfg: lab.env (sourced here),
#    sshd_config, the per-run host key and authorized key
# 3. the host root read-only over 9p (tag "hostroot") on /newroot; tmpfs on its /run, /tmp,
#    /var/tmp, /root and /mnt (with /mnt/lab for the lab's mount points); proc, sys, dev,
#    dev/pts, dev/shm; host paths listed in LAB_KEEP_PATHS (the host's Python under /root...)
#    bound back over those tmpfs; the kernel's own modules dir bound at
#    /run/overlaylab/modroot so the host's modprobe works in the guest
#    (MODPROBE_OPTIONS="-d /run/overlaylab/modroot", and the kernel's own requests go through
#    /sbin/overlaylab-modprobe), and at /lib/modules/<release> where the host has that dir;
#    the kernel config at /boot/config-<release>; /dev/disk/by-profile/<serial> links to the
#    virtio disks (the serial is the profile name) and udev database entries for lsblk;
#    what the storage engines (containers-storage, fuse-overlayfs, dockerd + containerd + runc)
#    need besides /run: a writable /var/lib and /etc/docker, cgroup2 at /sys/fs/cgroup, the
#    /dev/fd links (/dev/fuse comes with the fuse module of step 1)
# 4. eth0 10.0.2.15/24 via 10.0.2.2 (qemu user-mode networking), the HOST's sshd in a chroot
#    of /newroot on port 22, then the ready marker on the console
# 5. waits until /run/overlaylab/poweroff exists in the guest, then `poweroff -f`
# Any failure prints "OVERLAYLAB-FAILED: <why>" and powers off, so qemu exits at once.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /newroot /cfg
/bin/busybox --install -s

say() { echo "overlaylab-init: [$(cut -d' ' -f1 /proc/uptime 2>/dev/null)] $*"; }
fail() {
    echo "OVERLAYLAB-FAILED: $*"
    dmesg 2>/dev/null | tail -n 30
    sync
    poweroff -f
    sleep 5
    exit 1
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

load_modules() {  # $1: a file of module names in load order
    n=0
    while read -r m; do
        [ -n "$m" ] || continue
        if insmod "/modules/$m.ko" 2>"/tmp/insmod.$m"; then
            n=$((n + 1))
        else
            grep -q "File exists" "/tmp/insmod.$m" || say "insmod $m: $(cat "/tmp/insmod.$m")"
        fi
    done < "$1"
    say "loaded $n modules from $1"
}
load_modules /modules/order.boot
# filesystem modules (big, slow to relocate under TCG) load while the rest of the boot goes on
load_modules /modules/order.lab &
lab_modules=$!

mount -t 9p -o trans=virtio,version=9p2000.L,ro labcfg /cfg || fail "cannot mount the labcfg 9p share"
[ -f /cfg/lab.env ] || fail "no lab.env on the labcfg share"
. /cfg/lab.env

say "config share mounted"
R=/newroot
mount -t 9p -o "trans=virtio,version=9p2000.L,ro,msize=${LAB_9P_MSIZE:-262144},cache=${LAB_9P_CACHE:-loose}" \
    hostroot $R || fail "cannot mount the host root over 9p"
[ -x "$R$LAB_SSHD" ] || fail "no $LAB_SSHD in the host root"

mount -t tmpfs -o mode=0755 tmpfs $R/run || fail "tmpfs on /run"
mkdir -p $R/run/overlaylab $R/run/sshd
chmod 0755 $R/run/sshd
if [ -n "$LAB_MODULES_DIR" ] && [ -d "$R$LAB_MODULES_DIR" ]; then
    # before /tmp and /root get their tmpfs: the modules may live in a cache under either
    mkdir -p "$R/run/overlaylab/modroot/lib/modules/$LAB_RELEASE"
    mount -o bind "$R$LAB_MODULES_DIR" "$R/run/overlaylab/modroot/lib/modules/$LAB_RELEASE" \
        || say "cannot bind the modules dir"
fi
if [ -n "$LAB_CONFIG" ] && [ -f "$R$LAB_CONFIG" ]; then
    cp "$R$LAB_CONFIG" "$R/run/overlaylab/config-$LAB_RELEASE"
fi
# host paths the guest needs that the tmpfs below would hide (the host's Python under /root,
# a project checked out under /tmp...): stash a bind of each now, put it back afterwards
i=0
OLDIFS=$IFS
IFS=:
for p in $LAB_KEEP_PATHS; do
    if [ -n "$p" ] && [ -d "$R$p" ]; then
        mkdir -p "$R/run/overlaylab/keep/$i"
        mount -o bind "$R$p" "$R/run/overlaylab/keep/$i" || say "cannot keep $p"
    fi
    i=$((i + 1))
done
IFS=$OLDIFS
# /var/lib for the engines' state (containers-storage makes /var/lib/containers/storage on any
# command without --graph, `version` included; dockerd and containerd keep to --data-root but
# default there): stash the host's, cover it with a tmpfs below, bind each entry back read-only,
# so new dirs there are writable and dpkg's database still answers
varlib=
if [ -d $R/var/lib ]; then
    mkdir -p $R/run/overlaylab/varlib
    if mount -o bind $R/var/lib $R/run/overlaylab/varlib; then
        varlib=$R/run/overlaylab/varlib
    else
        say "cannot stash /var/lib: it stays read-only"
    fi
fi
for d in tmp var/tmp root mnt; do
    if [ -d "$R/$d" ]; then
        mount -t tmpfs -o mode=0755 tmpfs "$R/$d" || fail "tmpfs on /$d"
    else
        say "no /$d in the host root; left out"
    fi
done
if [ -n "$varlib" ] && mount -t tmpfs -o mode=0755 tmpfs $R/var/lib; then
    for e in $varlib/*; do
        n=${e##*/}
        case "$n" in
            docker|containerd|containers) continue ;;  # the engines' own state starts empty
        esac
        if [ -L "$e" ]; then
            ln -s "$(readlink "$e")" "$R/var/lib/$n"
        elif [ -d "$e" ]; then
            mkdir "$R/var/lib/$n" && mount -o bind "$e" "$R/var/lib/$n"
        elif [ -e "$e" ]; then
            touch "$R/var/lib/$n" && mount -o bind "$e" "$R/var/lib/$n"
        fi || say "cannot bind /var/lib/$n back"
    done
    umount $varlib && rmdir $varlib
fi
# dockerd 20.10 creates its trust key /etc/docker/key.json when there is none (docker.io ships
# the dir); the tmpfs also keeps a host daemon.json away from the lab's private daemons
[ -d $R/etc/docker ] && mount -t tmpfs -o mode=0700 tmpfs $R/etc/docker
chmod 1777 $R/tmp $R/var/tmp 2>/dev/null
chmod 0700 $R/root 2>/dev/null
mkdir -p $R/mnt/lab
# the guest kernel's config where tools look for it (/boot/config-<release>)
if [ -f "$R/run/overlaylab/config-$LAB_RELEASE" ] && [ -d $R/boot ]; then
    mount -t tmpfs -o mode=0755 tmpfs $R/boot && cp "$R/run/overlaylab/config-$LAB_RELEASE" $R/boot/
fi
# and its modules at /lib/modules/<release> when the host has such a directory to cover
if [ -d "$R/run/overlaylab/modroot/lib/modules/$LAB_RELEASE/kernel" ] && [ -d $R/usr/lib/modules ]; then
    mount -t tmpfs -o mode=0755 tmpfs $R/usr/lib/modules \
        && mkdir -p "$R/usr/lib/modules/$LAB_RELEASE" \
        && mount -o bind "$R/run/overlaylab/modroot/lib/modules/$LAB_RELEASE" "$R/usr/lib/modules/$LAB_RELEASE"
fi
i=0
IFS=:
for p in $LAB_KEEP_PATHS; do
    if [ -d "$R/run/overlaylab/keep/$i" ]; then
        mkdir -p "$R$p" && mount -o bind "$R/run/overlaylab/keep/$i" "$R$p" || say "cannot restore $p"
    fi
    i=$((i + 1))
done
IFS=$OLDIFS
mount -t proc proc $R/proc || fail "proc in the new root"
mount -t sysfs sysfs $R/sys || fail "sysfs in the new root"
mount -t devtmpfs devtmpfs $R/dev || fail "devtmpfs in the new root"
# cgroup v2 where dockerd, containerd and runc look for it (without it dockerd 20.10 stops with
# "Devices cgroup isn't mounted"); they enable the controllers they use. dockerd, containerd and
# the shims also make /run/docker/plugins and /run/containerd/s whatever --exec-root says: /run
# is a tmpfs already
mount -t cgroup2 -o nsdelegate cgroup2 $R/sys/fs/cgroup || say "cannot mount cgroup2"
# the links udev makes in /dev: on 5.10 execveat(fd, "", AT_EMPTY_PATH) fails with ENOENT
# without /dev/fd, and so does runc's re-exec of its own binary ("could not ensure we are a
# cloned binary", opencontainers/runc#2552): no container starts
for l in fd:fd stdin:fd/0 stdout:fd/1 stderr:fd/2; do
    ln -sfn "/proc/self/${l#*:}" "$R/dev/${l%%:*}"
done
mkdir -p $R/dev/pts $R/dev/shm
# No udev in the guest: /dev/disk/by-profile/<profile> -> ../../vdX from the virtio serial qemu
# sets to the profile name, and a udev database entry per disk so `lsblk -o NAME,SERIAL` shows it
mkdir -p $R/dev/disk/by-profile $R/run/udev/data
for b in /sys/block/vd*; do
    [ -r "$b/serial" ] || continue
    s=$(cat "$b/serial")
    [ -n "$s" ] || continue
    ln -sfn "../../${b##*/}" "$R/dev/disk/by-profile/$s"
    echo "OVERLAYLAB-DISK $s ${b##*/}"  # the host maps its disks from these lines, no ssh round trip
    printf 'E:ID_SERIAL=%s\nE:ID_SERIAL_SHORT=%s\nS:disk/by-profile/%s\n' "$s" "$s" "$s" \
        > "$R/run/udev/data/b$(cat "$b/dev")"
done
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
[ -d $R/sys/kernel/debug ] && mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
# mounts the agent makes under /mnt/lab must propagate to any namespace that binds them
mount --make-rshared $R/mnt 2>/dev/null || mount -o rshared $R/mnt 2>/dev/null || say "cannot make /mnt shared"

# the kernel's own module requests (mount -t xfs, ...) go to the host's modprobe in the new root
# (and the agent's `modprobe overlay` at every driver Init is that same host kmod, found on the
# PATH of providers/qemu.py: ~60 ms under TCG against ~11 ms for the static busybox's, but
# busybox modprobe ignores MODPROBE_OPTIONS and knows only /lib/modules/<release>, which the
# chroot lacks where the host has no /usr/lib/modules; it could load nothing here and would
# change the modprobe the probes record and the engines run, so the host's kmod stays first)
if [ -d "$R/run/overlaylab/modroot/lib/modules/$LAB_RELEASE/kernel" ]; then
    for mp in /usr/sbin/modprobe /sbin/modprobe; do
        if [ -e "$R$mp" ] || [ -L "$R$mp" ]; then  # may be an absolute symlink (to /bin/kmod)
            printf '#!/bin/sh\nexec /bin/busybox chroot %s %s -d /run/overlaylab/modroot "$@"\n' "$R" "$mp" \
                > /sbin/overlaylab-modprobe
            chmod 0755 /sbin/overlaylab-modprobe
            echo /sbin/overlaylab-modprobe > /proc/sys/kernel/modprobe
            break
        fi
    done
fi
if [ "$(cat /proc/sys/kernel/modprobe)" = /sbin/overlaylab-modprobe ]; then
    say "on demand (first mount): $(tr '\n' ' ' < /modules/order.ondemand)"
else
    load_modules /modules/order.ondemand &
    ondemand_modules=$!
fi

cp /cfg/* $R/run/overlaylab/ || fail "cannot copy the run config"
chmod 0600 $R/run/overlaylab/ssh_host_ed25519_key
chmod 0644 $R/run/overlaylab/authorized_keys

hostname "${LAB_HOSTNAME:-overlaylab}"
ip link set lo up
ip link set eth0 up || fail "no eth0 (virtio_net missing?)"
ip addr add "${LAB_IP:-10.0.2.15/24}" dev eth0
ip route add default via "${LAB_GW:-10.0.2.2}"

# -r: no re-exec of sshd for each connection (~0.25 s of the guest's CPU under TCG, on the way to
# the first result); an sshd without the option (OpenSSH 9.8 split off sshd-session) starts as is
start_sshd() {
    chroot $R /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        "$LAB_SSHD" "$@" -f /run/overlaylab/sshd_config -E /run/overlaylab/sshd.log
}
start_sshd -r 2>/dev/null || start_sshd \
    || fail "sshd did not start: $(cat $R/run/overlaylab/sshd.log 2>/dev/null | tail -n 3)"

say "sshd started"
wait $lab_modules $ondemand_modules
echo "${LAB_READY_MARKER:-OVERLAYLAB-READY} $(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"

while [ ! -e $R/run/overlaylab/poweroff ]; do
    sleep 1
done
say "power-off requested"
sync
poweroff -f
