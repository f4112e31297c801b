#!/bin/bash
# Build a Vagrant (libvirt) box disk image from Debian packages: debootstrap the suite with its
# own kernel, configure it for Vagrant, and write a bootable qcow2 (GRUB on a dos label).
#
# Driven by `overlaylab boxes build NAME` (overlaylab/providers/vagrant/boxes.py), which passes everything in the
# environment; nothing here names a mirror, the caller derives it from the system's apt sources:
#   SUITE        Debian suite (bullseye, bookworm, trixie)
#   MIRROR       the Debian archive URI (from /etc/apt, see overlaylab/kernels/aptsources.py)
#   KEYRING      optional keyring file for debootstrap
#   INCLUDE      comma-separated packages to install on top of minbase
#   WORKDIR      scratch directory (rootfs/, disk.raw, mnt/); removed by the caller
#   OUT_IMG      the qcow2 to write
#   PUBKEY       the public key for ~vagrant/.ssh/authorized_keys (Vagrant's insecure key)
#   BOX_HOSTNAME hostname in the guest
#   DISK_GB      virtual size of the disk in GiB
#   DEB_CACHE    optional directory where debootstrap keeps the .debs it fetched (rebuilds reuse them)
set -euo pipefail
: "${SUITE:?}" "${MIRROR:?}" "${INCLUDE:?}" "${WORKDIR:?}" "${OUT_IMG:?}" "${PUBKEY:?}"
BOX_HOSTNAME=${BOX_HOSTNAME:-overlaylab-$SUITE}
DISK_GB=${DISK_GB:-8}
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
rootfs=$WORKDIR/rootfs
mnt=$WORKDIR/mnt
raw=$WORKDIR/disk.raw
loop=""

step() { echo "=== $(date +%T) $*"; }

cleanup() {
    set +e
    for m in "$mnt/sys" "$mnt/proc" "$mnt/dev/pts" "$mnt/dev" "$mnt"; do
        mountpoint -q "$m" && umount -l "$m"
    done
    if [ -n "$loop" ]; then
        partx -d "$loop" >/dev/null 2>&1
        losetup -d "$loop"
    fi
}
trap cleanup EXIT

# --- 1. debootstrap ---------------------------------------------------------------------------
step "debootstrap $SUITE from $MIRROR"
rm -rf "$rootfs"
mkdir -p "$rootfs" "$mnt"
[ -n "${DEB_CACHE:-}" ] && mkdir -p "$DEB_CACHE"
debootstrap --variant=minbase ${KEYRING:+--keyring="$KEYRING"} ${DEB_CACHE:+--cache-dir="$DEB_CACHE"} \
    --include="$INCLUDE" \
    "$SUITE" "$rootfs" "$MIRROR"

# --- 2. configure for Vagrant -----------------------------------------------------------------
step "configure"
echo "$BOX_HOSTNAME" > "$rootfs/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
    "$BOX_HOSTNAME" > "$rootfs/etc/hosts"
echo "LABEL=rootfs / ext4 errors=remount-ro 0 1" > "$rootfs/etc/fstab"
echo "deb $MIRROR $SUITE main" > "$rootfs/etc/apt/sources.list"
mkdir -p "$rootfs/etc/systemd/network"
printf '[Match]\nName=e*\n\n[Network]\nDHCP=ipv4\n' > "$rootfs/etc/systemd/network/50-overlaylab.network"
if [ ! -e "$rootfs/lib/systemd/system/systemd-networkd.service" ] && \
   [ ! -e "$rootfs/usr/lib/systemd/system/systemd-networkd.service" ]; then
    # newer suites ship networkd in a package of its own
    chroot "$rootfs" apt-get update -qq
    chroot "$rootfs" apt-get install -y -qq --no-install-recommends systemd-networkd
fi
chroot "$rootfs" systemctl enable systemd-networkd.service
chroot "$rootfs" systemctl enable ssh.service 2>/dev/null || true
chroot "$rootfs" systemctl enable serial-getty@ttyS0.service 2>/dev/null || true
# a lab box boots, runs the agent and is destroyed: nothing periodic, no VGA console, no waiting
# for a network that is only a loopback forward (each of these cost seconds under TCG)
chroot "$rootfs" systemctl mask e2scrub_reap.service e2scrub_all.timer apt-daily.timer \
    apt-daily-upgrade.timer dpkg-db-backup.timer fstrim.timer man-db.timer \
    systemd-networkd-wait-online.service getty@tty1.service >/dev/null 2>&1 || true
# the lab loads overlay itself, but have it ready (pitfall 8: not in /proc/filesystems until loaded)
echo overlay > "$rootfs/etc/modules-load.d/overlaylab.conf"

chroot "$rootfs" useradd -m -s /bin/bash -G sudo vagrant
echo "vagrant:vagrant" | chroot "$rootfs" chpasswd
echo "root:vagrant" | chroot "$rootfs" chpasswd
echo "vagrant ALL=(ALL) NOPASSWD:ALL" > "$rootfs/etc/sudoers.d/vagrant"
chmod 0440 "$rootfs/etc/sudoers.d/vagrant"
install -d -m 0700 "$rootfs/home/vagrant/.ssh"
install -m 0600 "$PUBKEY" "$rootfs/home/vagrant/.ssh/authorized_keys"
chroot "$rootfs" chown -R vagrant:vagrant /home/vagrant/.ssh
mkdir -p "$rootfs/etc/ssh/sshd_config.d"
printf 'UseDNS no\n' > "$rootfs/etc/ssh/sshd_config.d/overlaylab.conf"
grep -q '^Include /etc/ssh/sshd_config.d' "$rootfs/etc/ssh/sshd_config" || echo "UseDNS no" >> "$rootfs/etc/ssh/sshd_config"
# a fresh machine-id on each boot of each clone
: > "$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"

cat > "$rootfs/etc/default/grub" <<'GRUB'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8 net.ifnames=0"
GRUB_TERMINAL="serial console"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
GRUB
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin

# --- 3. rootfs -> partitioned raw -> GRUB -> qcow2 --------------------------------------------
step "disk image"
rm -f "$raw"
truncate -s "${DISK_GB}G" "$raw"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$raw"
loop=$(losetup -f --show -P "$raw")
partx -a "$loop" 2>/dev/null || true          # pitfall 4: -P alone made no p1 here
part=${loop}p1
for _ in $(seq 50); do [ -b "$part" ] && break; sleep 0.1; done
[ -b "$part" ] || { echo "no partition device $part" >&2; exit 1; }
mkfs.ext4 -q -L rootfs "$part"
mount "$part" "$mnt"
cp -a "$rootfs/." "$mnt/"
mount --bind /dev "$mnt/dev"
mount -t proc proc "$mnt/proc"
mount -t sysfs sysfs "$mnt/sys"
chroot "$mnt" grub-install --target=i386-pc --modules="part_msdos ext2" "$loop"
chroot "$mnt" update-grub
# pitfall 5: update-grub in a chroot writes root=/dev/loopNp1
sed -i -E "s#root=/dev/loop[0-9]+p1#root=LABEL=rootfs#g" "$mnt/boot/grub/grub.cfg"
grep -Eq 'root=(LABEL=rootfs|UUID=)' "$mnt/boot/grub/grub.cfg"
sync
cleanup
loop=""
trap - EXIT
step "qcow2"
qemu-img convert -O qcow2 "$raw" "$OUT_IMG"
rm -f "$raw"
step "done: $OUT_IMG"
