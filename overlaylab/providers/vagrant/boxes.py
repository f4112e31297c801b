"""Vagrant boxes for the lab: the catalogue (``vms/boxes.toml``), the Vagrantfile's settings as
plain data, and the box builder.

The repository's ``Vagrantfile`` holds no settings of its own: it reads a JSON document made
by :func:`vagrant_settings` — from the file named by ``$OVERLAYLAB_VAGRANT_CONFIG`` when
``overlaylab run --provider vagrant`` drives it (one machine, the run's disks, a free port), or
by running ``python3 -m overlaylab.providers.vagrant.boxes vagrant-config`` when a user types ``vagrant up NAME``
by hand (every box of the catalogue, one disk per block profile, ports from ``ssh_port_base``).
So every libvirt setting (``driver``, CPU model, the loopback-only user-mode NIC, the disks) is
built by pure functions here and unit-tested without a VM.

The builder (``overlaylab boxes build NAME``) debootstraps the box's suite with its own kernel
from the Debian mirror the system's apt sources name (:mod:`overlaylab.kernels.aptsources`),
runs ``vms/boxes/build-box.sh`` (partitioned disk, GRUB, qcow2), packs a libvirt ``.box`` into
the user cache (``~/.cache/overlaylab/boxes/NAME/``) and ``vagrant box add``\\ s it. A box whose
recipe (suite, packages, build script) has not changed is neither rebuilt nor re-added.

This module imports nothing outside the standard library (and the package's own stdlib-only
modules) at import time: the Vagrantfile runs it with whatever ``python3`` the host has.
"""
from __future__ import annotations

import codecs
import glob
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

try:  # Python >= 3.11
    import tomllib
except ImportError:  # pragma: no cover - 3.9/3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ...agent.procutil import KILL_NOW, popen_group, read_pipes, stop_group
from ...kernels.cache import cache_root
from ...paths import PROJECT_ROOT

ENV_BOXES = "OVERLAYLAB_BOXES"
ENV_VAGRANT_CONFIG = "OVERLAYLAB_VAGRANT_CONFIG"
BUILD_SCRIPT = PROJECT_ROOT / "vms" / "boxes" / "build-box.sh"
BOX_VAGRANTFILE = PROJECT_ROOT / "vms" / "boxes" / "box.Vagrantfile"

#: the guest sees the user-mode NIC at this PCI slot (pitfall 10: qemuargs devices need one)
NIC_PCI_ADDR = "0x1e"
#: virtio-blk serials are at most 20 bytes
SERIAL_MAX = 20


class BoxError(RuntimeError):
    """A box could not be built, added or found; ``.output`` holds the tool's output."""

    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.output = output


# --- the catalogue ----------------------------------------------------------------------------

@dataclass(frozen=True)
class BoxSpec:
    name: str
    vagrant_box: str
    description: str = ""
    build: str = "debootstrap"  # or "none": a box from elsewhere
    suite: str = ""
    kernel_package: str = "linux-image-cloud-amd64"
    packages: Tuple[str, ...] = ()
    python: str = ""
    memory_mib: int = 1024
    cpus: int = 2
    boot_timeout: int = 300
    insert_key: bool = False
    disk_type: str = "qcow2"
    guest: str = ""  # Vagrant guest type ("debian"): skips guest detection after boot


@dataclass(frozen=True)
class Catalogue:
    boxes: Dict[str, BoxSpec]
    build_packages: Tuple[str, ...] = ()
    disk_gib: int = 8
    ssh_port_base: int = 2250
    path: str = ""

    def get(self, name: str) -> BoxSpec:
        """The box called ``name`` — or whose Vagrant box name is ``name``."""
        if name in self.boxes:
            return self.boxes[name]
        for spec in self.boxes.values():
            if spec.vagrant_box == name:
                return spec
        raise KeyError("unknown box %r (have: %s)" % (name, ", ".join(self.boxes)))


def default_boxes_path() -> Path:
    env = os.environ.get(ENV_BOXES)
    return Path(env) if env else PROJECT_ROOT / "vms" / "boxes.toml"


def parse_catalogue(text: str, path: str = "") -> Catalogue:
    data = tomllib.loads(text)
    defaults = data.get("defaults", {})
    build = data.get("build", {})
    boxes: Dict[str, BoxSpec] = {}
    for name, table in (data.get("box") or {}).items():
        merged = dict(defaults)
        merged.update(table)
        if merged.get("build", "debootstrap") not in ("debootstrap", "none"):
            raise ValueError("box %s: build must be 'debootstrap' or 'none'" % name)
        if merged.get("build", "debootstrap") == "debootstrap" and not merged.get("suite"):
            raise ValueError("box %s: a debootstrap box needs a suite" % name)
        boxes[name] = BoxSpec(
            name=name,
            vagrant_box=str(merged.get("vagrant_box") or "overlaylab/%s" % name),
            description=str(merged.get("description", "")),
            build=str(merged.get("build", "debootstrap")),
            suite=str(merged.get("suite", "")),
            kernel_package=str(merged.get("kernel_package", "linux-image-cloud-amd64")),
            packages=tuple(str(p) for p in merged.get("packages", ())),
            python=str(merged.get("python", "")),
            memory_mib=int(merged.get("memory_mib", 1024)),
            cpus=int(merged.get("cpus", 2)),
            boot_timeout=int(merged.get("boot_timeout", 300)),
            insert_key=bool(merged.get("insert_key", False)),
            disk_type=str(merged.get("disk_type", "qcow2")),
            guest=str(merged.get("guest", "debian" if merged.get("build", "debootstrap") == "debootstrap" else "")),
        )
    return Catalogue(boxes=boxes, build_packages=tuple(str(p) for p in build.get("packages", ())),
                     disk_gib=int(build.get("disk_gib", 8)),
                     ssh_port_base=int(defaults.get("ssh_port_base", 2250)), path=path)


def load_catalogue(path: Optional[os.PathLike] = None) -> Catalogue:
    p = Path(path) if path else default_boxes_path()
    return parse_catalogue(p.read_text(encoding="utf-8"), str(p))


# --- the Vagrantfile's settings (pure) ---------------------------------------------------------

def disk_serials(profiles: Sequence[str]) -> List[str]:
    """A virtio serial per disk (the profile name when it fits and is unique, else ``diskN``);
    the guest finds each profile's device by it (``/sys/block/vdX/serial``)."""
    out: List[str] = []
    for i, name in enumerate(profiles):
        serial = re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:SERIAL_MAX]
        if not serial or serial in out:
            serial = "disk%d" % i
        out.append(serial)
    return out


def disk_settings(disks: Sequence[Tuple[str, int]], disk_type: str = "qcow2") -> List[Dict[str, Any]]:
    """One extra libvirt disk per filesystem profile: sparse qcow2 (pitfall 7), virtio, serial."""
    serials = disk_serials([name for name, _ in disks])
    return [{"profile": name, "serial": serial, "size": "%dM" % max(int(size_mib), 16),
             "type": disk_type, "bus": "virtio"}
            for (name, size_mib), serial in zip(disks, serials)]


def loopback_qemuargs(ssh_port: int) -> List[str]:
    """The user-mode NIC: no libvirt network, no bridge; ``restrict=on`` cuts the guest off from
    everything but the one forward 127.0.0.1:ssh_port -> guest:22."""
    return ["-netdev", "user,id=lab0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22" % int(ssh_port),
            "-device", "virtio-net-pci,netdev=lab0,bus=pci.0,addr=%s" % NIC_PCI_ADDR]


def accel_settings(accel: str) -> Dict[str, str]:
    """libvirt domain type and CPU: ``qemu`` (TCG) with a named CPU model, or ``kvm`` with the
    host's CPU. vagrant-libvirt defaults to kvm whenever /dev/kvm exists (pitfall 2)."""
    if accel == "kvm":
        return {"driver": "kvm", "cpu_mode": "host-passthrough", "cpu_model": ""}
    return {"driver": "qemu", "cpu_mode": "custom", "cpu_model": "qemu64"}


def machine_settings(spec: BoxSpec, ssh_port: int, disks: Sequence[Tuple[str, int]] = (),
                     accel: str = "tcg", domain_prefix: str = "overlaylab-",
                     console_log: Optional[str] = None) -> Dict[str, Any]:
    """Everything the Vagrantfile sets for one machine, as data."""
    m: Dict[str, Any] = {
        "name": spec.name,
        "box": spec.vagrant_box,
        "memory_mib": spec.memory_mib,
        "cpus": spec.cpus,
        "boot_timeout": spec.boot_timeout,
        "insert_key": spec.insert_key,
        "ssh_host": "127.0.0.1",
        "ssh_port": int(ssh_port),
        "domain_prefix": domain_prefix,
        "qemuargs": loopback_qemuargs(ssh_port),
        "disks": disk_settings(disks, spec.disk_type),
        "console_log": console_log,
        "guest": spec.guest,
    }
    m.update(accel_settings(accel))
    return m


def vagrant_settings(machines: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The document the Vagrantfile reads."""
    return {"version": 1, "network": "loopback", "machines": list(machines)}


def catalogue_settings(catalogue: Catalogue, profiles: Optional[Sequence[Tuple[str, int]]] = None,
                       accel: str = "tcg") -> Dict[str, Any]:
    """Settings for a hand-run ``vagrant up NAME``: every box, ports ``ssh_port_base + i``, one
    disk per block profile of ``vms/filesystems.toml``."""
    if profiles is None:
        profiles = default_disk_profiles()
    machines = [machine_settings(spec, catalogue.ssh_port_base + i + 1, profiles, accel=accel)
                for i, spec in enumerate(catalogue.boxes.values())]
    return vagrant_settings(machines)


def default_disk_profiles() -> List[Tuple[str, int]]:
    try:
        from ...agent.profiles import load_profiles
        return [(p.name, p.size_mib) for p in load_profiles().values() if p.kind == "block"]
    except Exception:  # the Vagrantfile must still load without the profiles
        return []


def choose_accel() -> Tuple[str, str]:
    """``kvm`` only when it is known to work: ``$OVERLAYLAB_ACCEL``, else the qemu provider's
    probe result cached in ``accel.json`` for this host kernel; otherwise TCG (on this machine
    kind ``/dev/kvm`` exists but guests hang)."""
    forced = os.environ.get("OVERLAYLAB_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return forced, "forced by OVERLAYLAB_ACCEL"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm missing or not accessible"
    try:
        data = json.loads((cache_root() / "accel.json").read_text())
        release = os.uname().release
        for key, value in data.items():
            if key.split("|", 1)[0] == release:
                return value.get("accel", "tcg"), "cached probe: %s" % value.get("reason", "")
    except (OSError, ValueError, AttributeError):
        pass
    return "tcg", "KVM not probed (run the qemu provider once, or set OVERLAYLAB_ACCEL=kvm)"


# --- caches and tools --------------------------------------------------------------------------

def box_cache_dir(name: str) -> Path:
    return cache_root() / "boxes" / name


def box_file(name: str) -> Path:
    return box_cache_dir(name) / ("overlaylab-%s-libvirt.box" % name)


def vagrant_insecure_key(public: bool = True) -> Path:
    """Vagrant's well-known insecure key pair as the installed Vagrant ships it."""
    patterns = ["/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant",
                "/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant",
                "/opt/vagrant/embedded/gems/*/gems/vagrant-*/keys/vagrant"]
    for pattern in patterns:
        for hit in sorted(glob.glob(pattern + (".pub" if public else "")), reverse=True):
            return Path(hit)
    raise BoxError("Vagrant's insecure key not found (is vagrant installed? see `overlaylab host-setup`)")


def run_tool(argv: Sequence[str], timeout: float, env: Optional[Mapping[str, str]] = None,
             log: Optional[Callable[[str], None]] = None) -> str:
    """Run a host tool with a time limit; its output (stdout+stderr) is returned, or carried by
    the :class:`BoxError` raised when it fails or runs out of time."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    p = popen_group(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env,
                    stdin=subprocess.DEVNULL)
    chunks: List[str] = []
    # text as a text-mode pipe reads it: UTF-8 with replacement, "\r\n" and "\r" made "\n"
    text = io.IncrementalNewlineDecoder(codecs.getincrementaldecoder("utf-8")("replace"), translate=True)
    pending = ""

    def take_lines(data: str) -> None:
        nonlocal pending
        *lines, pending = (pending + data).split("\n")
        for line in lines:
            chunks.append(line + "\n")
            if log:
                log(line)

    deadline = time.monotonic() + timeout
    try:
        try:
            read_pipes(p, deadline, lambda _stream, chunk: take_lines(text.decode(chunk)))
        except subprocess.TimeoutExpired:
            stop_group(p, KILL_NOW)
            raise BoxError("%s ran past %.0f s" % (argv[0], timeout), "".join(chunks) + pending) from None
        take_lines(text.decode(b"", final=True))
        if pending:
            chunks.append(pending)
            if log:
                log(pending)
        p.wait(max(1.0, deadline - time.monotonic()))
    except BaseException:
        if p.poll() is None:
            stop_group(p, KILL_NOW)
        raise
    finally:
        p.stdout.close()  # type: ignore[union-attr]
    out = "".join(chunks)
    if p.returncode != 0:
        raise BoxError("%s exited with status %d" % (" ".join(argv[:3]), p.returncode), out)
    return out


def vagrant_box_list(timeout: float = 60) -> List[Tuple[str, str, str]]:
    """``(name, provider, version)`` of each box Vagrant has (``vagrant box list``)."""
    out = run_tool(["vagrant", "box", "list", "--machine-readable"], timeout)
    rows: List[Tuple[str, str, str]] = []
    name = provider = None
    for line in out.splitlines():
        parts = line.split(",")
        if len(parts) < 4:
            continue
        kind, value = parts[2], parts[3]
        if kind == "box-name":
            name = value
        elif kind == "box-provider":
            provider = value
        elif kind == "box-version" and name:
            rows.append((name, provider or "", value))
            name = provider = None
    return rows


# --- building ----------------------------------------------------------------------------------

def build_packages(catalogue: Catalogue, spec: BoxSpec) -> List[str]:
    pkgs: List[str] = []
    for p in list(catalogue.build_packages) + [spec.kernel_package] + list(spec.packages):
        if p and p not in pkgs:
            pkgs.append(p)
    return pkgs


def recipe(catalogue: Catalogue, spec: BoxSpec) -> Dict[str, Any]:
    """What a box is made from; a cached box whose recipe hash matches is reused."""
    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""
    return {"suite": spec.suite, "packages": build_packages(catalogue, spec), "disk_gib": catalogue.disk_gib,
            "build_script": digest(BUILD_SCRIPT), "box_vagrantfile": digest(BOX_VAGRANTFILE)}


def recipe_hash(r: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()[:16]


def box_metadata(disk_gib: int) -> Dict[str, Any]:
    return {"provider": "libvirt", "format": "qcow2", "virtual_size": int(disk_gib)}


@dataclass
class BuildResult:
    name: str
    vagrant_box: str
    box_file: str
    built: bool  # False: the cached box was reused
    added: bool  # False: Vagrant already had it
    seconds: float
    info: Dict[str, Any] = field(default_factory=dict)


def read_info(name: str) -> Dict[str, Any]:
    try:
        return json.loads((box_cache_dir(name) / "box.json").read_text())
    except (OSError, ValueError):
        return {}


def _delete_stale_pool_volumes(vagrant_box: str, log: Callable[[str], None]) -> None:
    """``vagrant box remove``/``add --force`` leave the uploaded base volume in the pool (pitfall
    9); a rebuilt box would otherwise boot from the old one."""
    prefix = vagrant_box.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"
    try:
        out = run_tool(["virsh", "-c", "qemu:///system", "vol-list", "--pool", "default"], 60)
    except (BoxError, OSError):
        return
    for line in out.splitlines()[2:]:
        vol = line.split()[0] if line.split() else ""
        if vol.startswith(prefix):
            try:
                run_tool(["virsh", "-c", "qemu:///system", "vol-delete", "--pool", "default", vol], 60)
                log("deleted stale pool volume %s" % vol)
            except BoxError as err:
                log("could not delete %s: %s" % (vol, err.output.strip()))


def build_box(name: str, catalogue: Optional[Catalogue] = None, force: bool = False, add: bool = True,
              log: Callable[[str], None] = lambda s: None, timeout: float = 1800) -> BuildResult:
    """Build (if needed) and add (if needed) the box ``name``. Idempotent."""
    from ...kernels.aptsources import configured_mirror

    catalogue = catalogue or load_catalogue()
    spec = catalogue.get(name)
    start = time.monotonic()
    if spec.build == "none":
        have = {row[0] for row in vagrant_box_list()}
        if spec.vagrant_box not in have:
            raise BoxError("box %s (%s) is not built here; `vagrant box add` it first" % (name, spec.vagrant_box))
        return BuildResult(name, spec.vagrant_box, "", False, False, time.monotonic() - start)
    if os.geteuid() != 0:
        raise BoxError("building a box needs root (debootstrap, loop devices)")
    for tool in ("debootstrap", "sfdisk", "qemu-img", "losetup", "vagrant"):
        if not shutil.which(tool):
            raise BoxError("%s is missing; run `overlaylab host-setup` first" % tool)
    r = recipe(catalogue, spec)
    rhash = recipe_hash(r)
    out_dir = box_cache_dir(spec.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    bfile = box_file(spec.name)
    info = read_info(spec.name)
    built = False
    if force or not bfile.exists() or info.get("recipe_hash") != rhash:
        mirror = configured_mirror()
        work = out_dir / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        img = work / "box.img"
        env = {"SUITE": spec.suite, "MIRROR": mirror.uri, "INCLUDE": ",".join(build_packages(catalogue, spec)),
               "WORKDIR": str(work), "OUT_IMG": str(img), "PUBKEY": str(vagrant_insecure_key()),
               "BOX_HOSTNAME": "lab-%s" % spec.name, "DISK_GB": str(catalogue.disk_gib),
               "DEB_CACHE": str(cache_root() / "boxes" / "debs"),
               "KEYRING": mirror.signed_by if mirror.signed_by and os.path.isfile(mirror.signed_by) else ""}
        log("building box %s: debootstrap %s from %s" % (spec.name, spec.suite, mirror.uri))
        t0 = time.monotonic()
        output = run_tool(["bash", str(BUILD_SCRIPT)], timeout, env=env, log=log)
        rootfs = work / "rootfs"
        kernels = sorted(p.name[len("vmlinuz-"):] for p in (rootfs / "boot").glob("vmlinuz-*"))
        pythons = sorted(p.name for p in (rootfs / "usr" / "bin").glob("python3.*") if re.match(r"python3\.\d+$", p.name))
        shutil.rmtree(rootfs, ignore_errors=True)
        (work / "metadata.json").write_text(json.dumps(box_metadata(catalogue.disk_gib)) + "\n")
        shutil.copyfile(BOX_VAGRANTFILE, work / "Vagrantfile")
        log("packing %s" % bfile.name)
        tmp = bfile.with_suffix(".box.part")
        with tarfile.open(tmp, "w") as tar:  # uncompressed: qcow2 is already sparse, gzip costs 14 s
            for member in ("metadata.json", "Vagrantfile", "box.img"):
                tar.add(str(work / member), arcname=member)
        os.replace(tmp, bfile)
        shutil.rmtree(work, ignore_errors=True)
        info = {"name": spec.name, "vagrant_box": spec.vagrant_box, "suite": spec.suite, "recipe": r,
                "recipe_hash": rhash, "kernel_releases": kernels, "python": pythons[-1][len("python"):] if pythons else "",
                "mirror": mirror.uri, "built_at": int(time.time()), "build_seconds": round(time.monotonic() - t0, 1),
                "box_bytes": bfile.stat().st_size, "added_hash": None, "build_log_tail": output.splitlines()[-20:]}
        (out_dir / "box.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        built = True
    added = False
    have = {row[0] for row in vagrant_box_list()}
    if add and (built or spec.vagrant_box not in have or info.get("added_hash") != rhash):
        _delete_stale_pool_volumes(spec.vagrant_box, log)
        log("vagrant box add %s" % spec.vagrant_box)
        run_tool(["vagrant", "box", "add", "--force", "--name", spec.vagrant_box, str(bfile)], 600, log=log)
        info["added_hash"] = rhash
        (out_dir / "box.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        added = True
    return BuildResult(spec.name, spec.vagrant_box, str(bfile), built, added, time.monotonic() - start, info)


def list_boxes(catalogue: Optional[Catalogue] = None) -> List[Dict[str, Any]]:
    """Each catalogue box with its state: cached .box, added to Vagrant, kernel, build time."""
    catalogue = catalogue or load_catalogue()
    try:
        have = {row[0] for row in vagrant_box_list()}
    except (BoxError, OSError):
        have = set()
    rows = []
    for spec in catalogue.boxes.values():
        info = read_info(spec.name)
        current = spec.build == "none" or info.get("recipe_hash") == recipe_hash(recipe(catalogue, spec))
        rows.append({"name": spec.name, "vagrant_box": spec.vagrant_box, "suite": spec.suite,
                     "cached": box_file(spec.name).exists() and current,
                     "added": spec.vagrant_box in have,
                     "kernel": ", ".join(info.get("kernel_releases", [])),
                     "python": str(info.get("python", spec.python)).replace("python", ""),
                     "build_seconds": info.get("build_seconds"),
                     "description": spec.description})
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python3 -m overlaylab.providers.vagrant.boxes vagrant-config``: the settings JSON for the Vagrantfile."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["vagrant-config"]:
        catalogue = load_catalogue()
        accel, _ = choose_accel()
        json.dump(catalogue_settings(catalogue, accel=accel), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    sys.stderr.write("usage: python3 -m overlaylab.providers.vagrant.boxes vagrant-config\n")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
