"""The port as an engine: this project's v1.10.3 ``overlay`` driver, in process.

The session is what Docker 1.10.3's daemon does with its graph driver, minus the daemon: Init
on a fresh root on the backing filesystem (``GetDriver("overlay", root)``; a refusal is the
verdict, with Init's exact Go error text and its log line), a pull is ``Create`` + ``ApplyDiff``
per layer (moby v1.10.3 ``layer/layer_store.go`` ``Register``), a container is ``Create`` on the
image's top layer (``CreateRWLayer`` without the init layer), its rootfs is ``Get``/``Put``,
and ``Changes``/``Diff``/``Remove`` are the driver's own (moby v1.10.3
``daemon/graphdriver/overlay/overlay.go``, ``daemon/graphdriver/fsdiff.go``).

Every driver call is logged in the session's ``commands`` as ``[operation, ids...]`` (with
``rc`` 0 or 1 and the error), the way the other engines log their command lines.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import Any, Callable, Dict, Iterator, List, Sequence

from ... import __version__
from ...graphdriver.errors import SENTINELS
from ...graphdriver.graphtest import random_id
from ...mountutil import unmount_all_under
from ..logcapture import capture_log
from .base import Change, Engine, EngineError, EngineRefused, EngineSession, Verdict, fresh_dir

DRIVER_LOGGER = "overlaylab.graphdriver"


class PortSession(EngineSession):
    """The port's driver on one fresh root: images are layer chains, containers are layers."""

    def __init__(self, engine: Engine, backing_dir: str, workdir: str):
        super().__init__(engine, backing_dir, workdir)
        self.driver: Any = None
        self.images: Dict[str, List[str]] = {}   # image ref (its top layer) -> layer ids, base first
        self.containers: Dict[str, str] = {}     # container layer -> its image's top layer

    def _call(self, op: str, ids: Sequence[str], func: Callable[[], Any]) -> Any:
        """Run one driver operation, log it, and turn its failure into :class:`EngineError`."""
        if not self.verdict.accepted:
            raise EngineRefused(self.verdict.message, {"verdict": self.verdict.to_dict()})
        entry: Dict[str, Any] = {"argv": [op] + list(ids), "rc": 0}
        self.commands.append(entry)
        start = time.monotonic()
        try:
            return func()
        except Exception as err:
            code = getattr(err, "errno", None) or getattr(err, "wrapped_errno", None)
            entry.update(rc=1, stderr=str(err)[-400:], errno=code)
            raise EngineError(str(err) or type(err).__name__,
                              {"operation": entry["argv"], "type": type(err).__name__, "errno": code}) from err
        finally:
            entry["seconds"] = round(time.monotonic() - start, 3)

    def _apply(self, layer: str, parent: str, tar: str) -> int:
        with open(tar, "rb") as stream:
            return self.driver.apply_diff(layer, parent, stream)

    # the adapter -------------------------------------------------------------------------
    def pull(self, layer_tars: Sequence[str]) -> str:
        chain: List[str] = []
        parent = ""
        try:
            for tar in layer_tars:
                layer = random_id()
                self._call("Create", [layer, parent], lambda: self.driver.create(layer, parent, ""))
                chain.append(layer)
                self._call("ApplyDiff", [layer, parent, os.path.basename(tar)],
                           lambda: self._apply(layer, parent, tar))
                parent = layer
        except EngineError:
            # What the layer store does with a failed register: its layers go again.
            for layer in reversed(chain):
                with contextlib.suppress(EngineError):
                    self._call("Remove", [layer], lambda: self.driver.remove(layer))
            raise
        self.images[parent] = chain
        return parent

    def create(self, image: str) -> str:
        if image not in self.images:
            raise EngineError("no such image: %s" % image)
        ctr = random_id()
        self._call("Create", [ctr, image], lambda: self.driver.create(ctr, image, ""))
        self.containers[ctr] = image
        return ctr

    @contextlib.contextmanager
    def rootfs(self, container: str) -> Iterator[str]:
        self._parent(container)
        path = self._call("Get", [container], lambda: self.driver.get(container, ""))
        try:
            yield path
        finally:
            self._call("Put", [container], lambda: self.driver.put(container))

    def changes(self, container: str) -> List[Change]:
        parent = self._parent(container)
        found = self._call("Changes", [container, parent], lambda: self.driver.changes(container, parent))
        return sorted(((c.kind.letter, c.path) for c in found), key=lambda c: (c[1], c[0]))

    def export_diff(self, container: str, dest: str) -> None:
        parent = self._parent(container)

        def copy() -> None:
            stream = self.driver.diff(container, parent)
            try:
                with open(dest, "wb") as out:
                    shutil.copyfileobj(stream, out, 1 << 20)
            finally:
                stream.close()
        self._call("Diff", [container, parent], copy)

    def remove(self, ref: str) -> None:
        if ref in self.containers:
            self._call("Remove", [ref], lambda: self.driver.remove(ref))
            del self.containers[ref]
        elif ref in self.images:
            for layer in reversed(self.images[ref]):
                self._call("Remove", [layer], lambda: self.driver.remove(layer))
            del self.images[ref]
        else:
            raise EngineError("no such container or image: %s" % ref)

    def _parent(self, container: str) -> str:
        if container not in self.containers:
            raise EngineError("no such container: %s" % container)
        return self.containers[container]

    def close(self) -> None:
        """Put what is still got, unmount what is left under the home, clean the driver up."""
        proto = getattr(self.driver, "proto", self.driver)
        for layer in list(getattr(proto, "active", {})):
            with contextlib.suppress(Exception):
                while layer in proto.active:
                    proto.put(layer)
        left = unmount_all_under(proto.home)
        if left:
            self.commands.append({"argv": ["unmount-left"] + left, "rc": 0})
        with contextlib.suppress(Exception):
            self.driver.cleanup()


class PortEngine(Engine):
    name = "port"
    keywords = ("port", "in-process")
    description = "this project's port of Docker v1.10.3's overlay graph driver, in process"
    reference = "moby v1.10.3 daemon/graphdriver/overlay/overlay.go"

    def version(self) -> str:
        return "v1.10.3 (overlaylab %s)" % __version__

    @contextlib.contextmanager
    def open(self, backing_dir: str, workdir: str) -> Iterator[EngineSession]:
        from ...graphdriver import get_driver
        session = PortSession(self, backing_dir, workdir)
        root = fresh_dir(backing_dir, "port-")
        os.chmod(root, 0o755)
        try:
            with capture_log(DRIVER_LOGGER) as cap:
                try:
                    session.driver = get_driver("overlay", root)
                except SENTINELS as err:
                    session.verdict = Verdict(False, str(err), {"init_log": list(cap.lines), "home": root})
                except Exception as err:  # not a refusal: Init itself failed
                    raise EngineError(str(err) or type(err).__name__, {"init_log": list(cap.lines)}) from err
                else:
                    session.verdict = Verdict(True, "", {"init_log": list(cap.lines), "home": session.driver.home,
                                                         "status": [list(r) for r in session.driver.status()]})
            try:
                yield session
            finally:
                if session.driver is not None:
                    session.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)
