"""Where fetched kernels live, and the resolved index that lets later runs work offline.

Layout (under ``${XDG_CACHE_HOME:-~/.cache}/overlaylab``)::

    kernels/index.json                     entry name -> what it resolved to last time
    kernels/<package>_<sha256[:12]>/       one unpacked kernel (``root/`` + ``kernel.json``)
    apt/<suite>/{sources.list,lists,...}   apt state for the temporary sources (never the system's)
    initramfs/<release>-<hash>.cpio.gz     built initramfs images
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional


@dataclass(frozen=True)
class KernelImage:
    """A bootable kernel: its image, its modules directory and where it came from."""

    name: str
    release: str
    vmlinuz: str
    modules_dir: Optional[str]
    package: str = ""
    sha256: str = ""
    version: str = ""
    suite: str = ""
    kind: str = "debian"
    config: Optional[str] = None  # the kernel's .config (/boot/config-<rel> or <moddir>/config)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "KernelImage":
        fields = {k: data.get(k) for k in cls.__dataclass_fields__}  # type: ignore[attr-defined]
        return cls(**{k: v for k, v in fields.items() if v is not None})  # type: ignore[arg-type]


def cache_root(cache_dir: Optional[os.PathLike] = None) -> Path:
    """The overlaylab cache directory (``cache_dir`` wins over ``XDG_CACHE_HOME``)."""
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "overlaylab"


def kernels_dir(cache_dir: Optional[os.PathLike] = None) -> Path:
    d = cache_root(cache_dir) / "kernels"
    d.mkdir(parents=True, exist_ok=True)
    return d


def kernel_dir_name(package: str, sha256: str) -> str:
    """``<package>_<sha256[:12]>``: a cached kernel is keyed by package name and checksum."""
    return "%s_%s" % (package, sha256[:12])


def sha256_file(path: os.PathLike, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(bufsize), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % path.name, dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path, default: object = None) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


class KernelIndex:
    """``kernels/index.json``: entry name -> the resolution it had (package, sha256, dir...)."""

    def __init__(self, cache_dir: Optional[os.PathLike] = None) -> None:
        self.path = kernels_dir(cache_dir) / "index.json"

    def load(self) -> Dict[str, dict]:
        data = read_json(self.path, {})
        return data.get("entries", {}) if isinstance(data, dict) else {}

    def get(self, name: str) -> Optional[dict]:
        return self.load().get(name)

    def put(self, name: str, record: dict) -> None:
        entries = self.load()
        entries[name] = record
        write_json_atomic(self.path, {"entries": entries})


def load_cached_kernel(kdir: Path) -> Optional[KernelImage]:
    """The :class:`KernelImage` recorded in ``kdir/kernel.json``, if complete and still there."""
    data = read_json(kdir / "kernel.json")
    if not isinstance(data, dict):
        return None
    try:
        image = KernelImage.from_json(data)
    except TypeError:
        return None
    if not os.path.isfile(image.vmlinuz):
        return None
    if image.modules_dir and not os.path.isdir(image.modules_dir):
        return None
    return image


@contextlib.contextmanager
def locked(cache_dir: Optional[os.PathLike] = None) -> Iterator[None]:
    """Serialise fetches sharing one cache (two lab runs may start at once)."""
    lock = kernels_dir(cache_dir) / ".lock"
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
