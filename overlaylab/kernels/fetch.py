"""Fetch Debian kernels with apt (without touching the system's apt state) and cache them.

``fetch_kernel(entry)`` resolves a catalogue entry to a :class:`KernelImage`:

* ``debian``: ``apt-get update`` against a temporary sources.list for the entry's suite (the
  mirror comes from the system's configured sources), ``apt-cache`` to find the newest package
  matching the pattern, ``apt-get download`` of it (and of the ``linux-binary-*`` /
  ``linux-modules-*`` parts newer packages split off), ``dpkg-deb -x``, then ``depmod``. All apt
  state goes under the cache (``-o Dir::State::Lists=... -o Dir::Cache=...``).
* ``host``: :func:`resolve_host_kernel`.
* ``custom``: the given vmlinuz and modules directory, as they are.
* ``deb``: local .deb files, unpacked into the cache like a fetched one.

Once resolved, an entry is recorded in ``kernels/index.json`` and later calls return it from the
cache without any network (``refresh=True`` re-resolves). Anything that prevents getting a kernel
raises :class:`KernelUnavailable` with a one-line reason.

Command line: ``python -m overlaylab.kernels.fetch [--refresh] [NAME...]``.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from . import aptsources
from .cache import (
    KernelImage,
    KernelIndex,
    cache_root,
    kernel_dir_name,
    kernels_dir,
    load_cached_kernel,
    locked,
    sha256_file,
    write_json_atomic,
)
from .catalogue import (
    KernelEntry,
    get_entry,
    kernel_parts,
    matching_packages,
    newest,
    parse_apt_cache_show,
    parse_depends,
)

APT_TIMEOUT = 600


class KernelUnavailable(RuntimeError):
    """The kernel cannot be had (not in the suite, no network and no cache, bad files...)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = " ".join(str(reason).split())  # one line
        super().__init__("kernel %s unavailable: %s" % (name, self.reason))


# --- apt with private state --------------------------------------------------------------------

class PrivateApt:
    """apt-get/apt-cache restricted to one suite, with all state under ``cache/apt/<suite>``."""

    def __init__(self, suite: str, cache_dir: Optional[os.PathLike] = None,
                 mirror: Optional[aptsources.Mirror] = None, etc_apt: str = "/etc/apt") -> None:
        self.suite = suite
        self.base = cache_root(cache_dir) / "apt" / suite
        self.parts = self.base / "parts"  # stays empty: hides the system's sources.list.d
        self.lists = self.base / "lists"
        self.cache = self.base / "cache"
        for d in (self.parts, self.lists / "partial", self.cache / "archives" / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        self.sources = self.base / "sources.list"
        self._mirror = mirror
        self._etc_apt = etc_apt

    def write_sources(self) -> None:
        mirror = self._mirror or aptsources.configured_mirror(self._etc_apt)
        aptsources.write_sources_list(str(self.sources), mirror, self.suite)

    def options(self) -> List[str]:
        opts = {
            "Dir::Etc::SourceList": str(self.sources),
            "Dir::Etc::SourceParts": str(self.parts),
            "Dir::Etc::Preferences": str(self.parts / "none.pref"),
            "Dir::Etc::PreferencesParts": str(self.parts),
            "Dir::State::Lists": str(self.lists),
            "Dir::Cache": str(self.cache),
            "Acquire::Languages": "none",
            "Acquire::Retries": "1",
            "Acquire::http::Timeout": "30",
            "APT::Get::List-Cleanup": "true",
        }
        if os.geteuid() == 0:
            opts["APT::Sandbox::User"] = "root"  # our private dirs are not _apt's
        out: List[str] = []
        for k, v in opts.items():
            out += ["-o", "%s=%s" % (k, v)]
        return out

    def run(self, tool: str, args: Sequence[str], cwd: Optional[str] = None,
            timeout: int = APT_TIMEOUT) -> subprocess.CompletedProcess:
        cmd = [tool, "-q"] + self.options() + list(args)
        env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
        return subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)

    def update(self) -> None:
        self.write_sources()
        p = self.run("apt-get", ["update"])
        errors = [l for l in (p.stderr + p.stdout).splitlines() if l.startswith(("E:", "Err:"))]
        if p.returncode != 0 or errors:
            raise RuntimeError("apt-get update for %s failed: %s" % (
                self.suite, (errors or (p.stderr.strip().splitlines() or ["exit %d" % p.returncode]))[-1]))

    def pkgnames(self, prefix: str) -> List[str]:
        p = self.run("apt-cache", ["pkgnames", prefix])
        return p.stdout.split()

    def show(self, packages: Sequence[str]) -> List[Dict[str, str]]:
        if not packages:
            return []
        p = self.run("apt-cache", ["show"] + list(packages))
        return parse_apt_cache_show(p.stdout)

    def expected_bytes(self, specs: Sequence[str]) -> Optional[int]:
        """The sum of the ``Size`` fields of ``pkg[=version]`` specs (None if any is unknown)."""
        total = 0
        for spec in specs:
            name, _, version = spec.partition("=")
            sizes = [r.get("Size") for r in self.show([name]) if not version or r.get("Version") == version]
            if not sizes or not str(sizes[0]).isdigit():
                return None
            total += int(sizes[0])
        return total

    def download(self, specs: Sequence[str], dest: str) -> List[str]:
        """``apt-get download`` into ``dest``; reports the bytes so far as the ``fetch`` phase's
        progress (lab/progress.py) by watching the files grow."""
        from ..lab.progress import phase_progress

        total = self.expected_bytes(specs)
        cmd = ["apt-get", "-q"] + self.options() + ["download"] + list(specs)
        env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, cwd=dest, env=env, stdout=out, stderr=err, universal_newlines=True)
            deadline = time.monotonic() + APT_TIMEOUT
            try:
                while proc.poll() is None:
                    if time.monotonic() > deadline:
                        raise subprocess.TimeoutExpired(cmd, APT_TIMEOUT)
                    phase_progress("fetch", _tree_bytes(dest, str(self.cache / "archives" / "partial")), total)
                    time.sleep(0.5)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            phase_progress("fetch", _tree_bytes(dest), total)
            out.seek(0)
            err.seek(0)
            p = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
        if p.returncode != 0:
            last = (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]
            raise RuntimeError("apt-get download %s failed: %s" % (" ".join(specs), last))
        return sorted(glob.glob(os.path.join(dest, "*.deb")))


def _tree_bytes(*dirs: str) -> int:
    """Bytes in the files under ``dirs`` (a download in progress)."""
    total = 0
    for d in dirs:
        for root, _subdirs, files in os.walk(d):
            for f in files:
                try:
                    total += os.lstat(os.path.join(root, f)).st_size
                except OSError:
                    pass
    return total


def literal_prefix(pattern: str) -> str:
    """The literal start of a package regex (what ``apt-cache pkgnames`` can filter on)."""
    m = re.match(r"[A-Za-z0-9+-]*", pattern.lstrip("^"))
    prefix = m.group(0) if m else ""
    # a trailing character followed by a quantifier is not certain to be there
    rest = pattern.lstrip("^")[len(prefix):]
    if rest[:1] in ("?", "*", "{") and prefix:
        prefix = prefix[:-1]
    return prefix


# --- unpacking and locating --------------------------------------------------------------------

def bzimage_release(path: os.PathLike) -> Optional[str]:
    """The release string a bzImage carries in its setup header (``6.1.0-50-amd64``), if any."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x4000)
            if head[0x202:0x206] != b"HdrS":
                return None
            off = struct.unpack_from("<H", head, 0x20E)[0]
            if not off:
                return None
            f.seek(off + 0x200)
            s = f.read(256).split(b"\0", 1)[0].decode("ascii", "replace")
            return s.split()[0] if s else None
    except (OSError, struct.error, IndexError):
        return None


def locate_kernel(root: Path) -> tuple:
    """Find ``(release, vmlinuz, modules_dir)`` in an unpacked package tree.

    Handles both layouts: ``boot/vmlinuz-<rel>`` + ``lib/modules/<rel>`` and (newer packages)
    ``usr/lib/modules/<rel>/vmlinuz`` + modules in the same directory.
    """
    moddirs = []
    for base in ("lib/modules", "usr/lib/modules"):
        d = root / base
        if d.is_dir() and not d.is_symlink():
            moddirs += [p for p in sorted(d.iterdir()) if p.is_dir()]
    vmlinuz = None
    release = None
    for cand in sorted(glob.glob(str(root / "boot" / "vmlinuz-*"))):
        vmlinuz, release = cand, os.path.basename(cand)[len("vmlinuz-"):]
    for d in moddirs:
        if (d / "vmlinuz").is_file():
            vmlinuz, release = str(d / "vmlinuz"), d.name
    if release is None and vmlinuz is not None:
        release = bzimage_release(vmlinuz)
    modules_dir = None
    for d in moddirs:
        if release is None or d.name == release:
            modules_dir, release = str(d), release or d.name
    return release, vmlinuz, modules_dir


def kernel_config(root: Path, release: str, modules_dir: Optional[str]) -> Optional[str]:
    """The kernel's .config in an unpacked tree (``boot/config-<rel>`` or ``<moddir>/config``)."""
    for cand in (root / "boot" / ("config-" + release),
                 Path(modules_dir) / "config" if modules_dir else None):
        if cand is not None and cand.is_file():
            return str(cand)
    return None


def run_depmod(root: Path, release: str) -> Optional[str]:
    """Generate modules.dep & co (Debian runs depmod in postinst; packages don't ship them)."""
    moddir = None
    for base in ("lib/modules", "usr/lib/modules"):
        if (root / base / release).is_dir():
            moddir = root / base / release
    if moddir is None:
        return "no modules directory"
    if (moddir / "modules.dep").is_file():
        return None
    if not (root / "lib").exists():
        os.symlink("usr/lib", root / "lib")  # kmod looks in <base>/lib/modules
    depmod = shutil.which("depmod") or next(
        (p for p in ("/usr/sbin/depmod", "/sbin/depmod") if os.path.exists(p)), None)
    if depmod is None:
        return "depmod not found (install kmod)"
    p = subprocess.run([depmod, "-a", "-b", str(root), release],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    if p.returncode != 0:
        return "depmod failed: %s" % p.stderr.strip()[-300:]
    return None


def unpack_debs(debs: Sequence[str], root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        p = subprocess.run(["dpkg-deb", "-x", deb, str(root)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        if p.returncode != 0:
            raise RuntimeError("dpkg-deb -x %s failed: %s" % (os.path.basename(deb), p.stderr.strip()))


def _finish_unpacked(name: str, tmp: Path, final: Path, package: str, sha256: str,
                     version: str, suite: str, kind: str) -> KernelImage:
    root = tmp / "root"
    release, _, _ = locate_kernel(root)
    if release is None:
        raise KernelUnavailable(name, "%s holds no vmlinuz or modules" % package)
    err = run_depmod(root, release)
    if err:
        sys.stderr.write("overlaylab: warning: %s: %s\n" % (name, err))
    # paths are recorded for the final location
    release, vmlinuz, modules_dir = locate_kernel(root)
    if vmlinuz is None:
        raise KernelUnavailable(name, "%s holds no vmlinuz" % package)

    def moved(p: Optional[str]) -> Optional[str]:
        return None if p is None else str(final / Path(p).relative_to(tmp))

    config = kernel_config(root, release, modules_dir)
    image = KernelImage(name=name, release=release, vmlinuz=moved(vmlinuz) or "",
                        modules_dir=moved(modules_dir), package=package, sha256=sha256,
                        version=version, suite=suite, kind=kind, config=moved(config))
    write_json_atomic(tmp / "kernel.json", image.to_json())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return image


# --- resolution per kind -----------------------------------------------------------------------

def resolve_host_kernel(name: str = "host") -> KernelImage:
    """The running kernel: its release, its vmlinuz (``/boot`` or the modules dir) and modules."""
    release = os.uname().release
    cands = ["/boot/vmlinuz-%s" % release, "/lib/modules/%s/vmlinuz" % release,
             "/usr/lib/modules/%s/vmlinuz" % release]
    vmlinuz = next((c for c in cands if os.path.isfile(c)), "")
    moddir = next((d for d in ("/lib/modules/%s" % release, "/usr/lib/modules/%s" % release)
                   if os.path.isdir(d)), None)
    if not vmlinuz:
        raise KernelUnavailable(name, "the host kernel %s has no vmlinuz in /boot or /lib/modules "
                                "(fine for the local provider, not bootable under qemu)" % release)
    config = next((c for c in ("/boot/config-%s" % release,
                               os.path.join(moddir, "config") if moddir else "") if c and os.path.isfile(c)), None)
    return KernelImage(name=name, release=release, vmlinuz=vmlinuz, modules_dir=moddir,
                       package="", sha256="", kind="host", config=config)


def _resolve_custom(entry: KernelEntry) -> KernelImage:
    if not entry.vmlinuz or not os.path.isfile(entry.vmlinuz):
        raise KernelUnavailable(entry.name, "vmlinuz %s does not exist" % entry.vmlinuz)
    if entry.modules and not os.path.isdir(entry.modules):
        raise KernelUnavailable(entry.name, "modules directory %s does not exist" % entry.modules)
    release = (os.path.basename(entry.modules.rstrip("/")) if entry.modules else None) \
        or bzimage_release(entry.vmlinuz) or "unknown"
    return KernelImage(name=entry.name, release=release, vmlinuz=entry.vmlinuz,
                       modules_dir=entry.modules, package="", sha256=sha256_file(entry.vmlinuz),
                       kind="custom")


def _resolve_deb(entry: KernelEntry, cache_dir: Optional[os.PathLike]) -> KernelImage:
    for d in entry.deb:
        if not os.path.isfile(d):
            raise KernelUnavailable(entry.name, ".deb %s does not exist" % d)
    sha = sha256_file(entry.deb[0])
    p = subprocess.run(["dpkg-deb", "-f", entry.deb[0], "Package", "Version"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    if p.returncode != 0:
        raise KernelUnavailable(entry.name, "%s is not a .deb: %s" % (entry.deb[0], p.stderr.strip()))
    info = dict(l.split(": ", 1) for l in p.stdout.splitlines() if ": " in l)
    package = info.get("Package", os.path.basename(entry.deb[0]))
    kdir = kernels_dir(cache_dir)
    final = kdir / kernel_dir_name(package, sha)
    cached = load_cached_kernel(final)
    if cached is not None:
        return cached
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=str(kdir)))
    try:
        unpack_debs(entry.deb, tmp / "root")
        return _finish_unpacked(entry.name, tmp, final, package, sha, info.get("Version", ""), "", "deb")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _from_index(entry: KernelEntry, index: KernelIndex) -> Optional[KernelImage]:
    rec = index.get(entry.name)
    if not rec or rec.get("suite") != entry.suite or rec.get("pattern") != entry.package:
        return None
    image = load_cached_kernel(Path(rec.get("dir", "")))
    if image is None:
        return None
    if image.name != entry.name:
        image = KernelImage(**dict(image.to_json(), name=entry.name))
    return image


def _resolve_debian(entry: KernelEntry, cache_dir: Optional[os.PathLike], refresh: bool,
                    mirror: Optional[aptsources.Mirror], etc_apt: str) -> KernelImage:
    index = KernelIndex(cache_dir)
    if not refresh:
        hit = _from_index(entry, index)
        if hit is not None:
            return hit
    apt = PrivateApt(entry.suite or "", cache_dir, mirror, etc_apt)
    try:
        apt.update()
    except (RuntimeError, OSError, subprocess.TimeoutExpired, aptsources.NoDebianMirror) as e:
        hit = _from_index(entry, index)
        if hit is not None:
            sys.stderr.write("overlaylab: %s: %s; using the cached %s\n" % (entry.name, e, hit.package))
            return hit
        raise KernelUnavailable(entry.name, "%s (no network? nothing cached)" % e) from None

    names = matching_packages(entry.package or "", apt.pkgnames(literal_prefix(entry.package or "")))
    best = newest(apt.show(names), entry.package)
    if best is None:
        raise KernelUnavailable(entry.name, "no package matching %r in %s" % (entry.package, entry.suite))

    kdir = kernels_dir(cache_dir)
    final = kdir / kernel_dir_name(best.package, best.sha256)
    image = load_cached_kernel(final)
    if image is None:
        # the exact versions of the split-off parts (= pinned in Depends)
        records = apt.show([best.package])
        deps = next((r.get("Depends", "") for r in records if r.get("Version") == best.version), "")
        pinned = {}
        for alts in parse_depends(deps):
            n, constraint = alts[0]
            m = re.match(r"\(\s*=\s*([^)\s]+)\s*\)", constraint or "")
            pinned[n] = m.group(1) if m else None
        specs = ["%s=%s" % (best.package, best.version)]
        for part in kernel_parts(best.depends):
            specs.append("%s=%s" % (part, pinned[part]) if pinned.get(part) else part)
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=str(kdir)))
        try:
            dl = tmp / "debs"
            dl.mkdir()
            try:
                debs = apt.download(specs, str(dl))
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                raise KernelUnavailable(entry.name, str(e)) from None
            main = [d for d in debs if os.path.basename(d).startswith(best.package + "_")]
            if best.sha256 and main and sha256_file(main[0]) != best.sha256:
                raise KernelUnavailable(entry.name, "%s: checksum mismatch" % os.path.basename(main[0]))
            try:
                unpack_debs(debs, tmp / "root")
            except RuntimeError as e:
                raise KernelUnavailable(entry.name, str(e)) from None
            shutil.rmtree(dl)
            image = _finish_unpacked(entry.name, tmp, final, best.package, best.sha256,
                                     best.version, entry.suite or "", "debian")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    elif image.name != entry.name:
        image = KernelImage(**dict(image.to_json(), name=entry.name))
    index.put(entry.name, {"suite": entry.suite, "pattern": entry.package, "package": image.package,
                           "version": image.version, "sha256": image.sha256, "release": image.release,
                           "dir": str(final), "resolved_at": int(time.time())})
    return image


def fetch_kernel(entry: Union[KernelEntry, str], cache_dir: Optional[os.PathLike] = None,
                 refresh: bool = False, mirror: Optional[aptsources.Mirror] = None,
                 etc_apt: str = "/etc/apt") -> KernelImage:
    """Resolve a catalogue entry (or its name) to a bootable :class:`KernelImage`.

    Debian kernels are downloaded once and then served from the cache, offline; ``refresh``
    asks apt again for a newer build. Raises :class:`KernelUnavailable` with a one-line reason.
    """
    if isinstance(entry, str):
        try:
            entry = get_entry(entry)
        except (ValueError, OSError) as e:
            raise KernelUnavailable(str(entry), str(e)) from None
    if entry.kind == "host":
        return resolve_host_kernel(entry.name)
    if entry.kind == "custom":
        return _resolve_custom(entry)
    with locked(cache_dir):
        if entry.kind == "deb":
            return _resolve_deb(entry, cache_dir)
        return _resolve_debian(entry, cache_dir, refresh, mirror, etc_apt)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .catalogue import load_catalogue

    ap = argparse.ArgumentParser(prog="overlaylab kernels fetch", description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="catalogue entries (default: all but host)")
    ap.add_argument("--refresh", action="store_true", help="ask apt for newer builds")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args(argv)
    cat = load_catalogue()
    names = args.names or [n for n, e in cat.items() if e.kind != "host"]
    rc = 0
    for n in names:
        t0 = time.monotonic()
        try:
            img = fetch_kernel(cat[n] if n in cat else n, args.cache_dir, refresh=args.refresh)
        except KernelUnavailable as e:
            print("%-14s UNAVAILABLE  %s" % (n, e.reason))
            rc = 1
            continue
        print("%-14s %-28s %-40s %5.1fs" % (n, img.release, img.package or img.vmlinuz, time.monotonic() - t0))
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
