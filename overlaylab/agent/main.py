"""The lab agent: runs inside a target (the host, a qemu guest, a Vagrant box) and prints JSON lines.

``python -m overlaylab.agent probe-target``
    one ``target`` record: kernel release, overlay config, /proc/filesystems, module parameters.
``python -m overlaylab.agent run --profile NAME [--device DEV [--check-devices]] [--scenario ID ...] [--engine NAME ...] [--probe-target]``
    with ``--probe-target``, first the ``target`` record of ``probe-target`` (the runner's first
    agent on a target: one interpreter start less); then makes the profile's backing filesystem (on a loop device, or on DEV inside a VM), probes it,
    asks the driver's Init for its verdict, then runs each scenario: a ``start`` record just
    before it (so a runner whose target died knows which cell was in flight; with
    ``--console-marks`` also a line on the kernel's console, :mod:`overlaylab.agent.cellmark`),
    one ``cell`` record as soon as it finishes; ends with a ``done`` record. The port's own
    scenarios run on the port; the ``engine`` group runs once per engine (default: the port).

``python -m overlaylab.agent hold DIR --run RUN``
    on a remote host: marks DIR (the shipped agent's per-run directory) as owned by itself,
    prints a ``held`` record, and when its stdin closes (the runner is done, or its ssh
    connection died) stops the agents working in DIR and removes everything below it
    (:mod:`overlaylab.agent.hold`).

Every record is flushed as it is written, so a runner that has to kill a hung agent still has
the cells that finished.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from . import cellmark
from . import cleanup as cleanup_mod
from . import hold as hold_mod
from . import probes as probe_mod
from .backingfs import BackingFsUnavailable, make_backing_fs
from .devices import device_problem
from .engine_cells import run_engine_cells
from .engines import DEFAULT_ENGINE, ENGINES
from .features import features_probe, probe_features
from .profiles import load_profiles, parse_profiles
from .scenario import ENGINE_GROUP, Expectation, Facts, Outcome, all_scenarios, run_scenario
from .shell import KernelLogCursor
from .records import PORT_ENGINE, CellRecord, ProfileRecord, TargetRecord
from .timings import Timings, process_age, profiled
from .. import mountutil


def emit(record: Any) -> None:
    if not isinstance(record, dict):
        record = record.to_json()
    sys.stdout.write(json.dumps(record, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def _probe_dicts(probes) -> Dict[str, Any]:
    return {p.name: p.to_dict() for p in probes}


def _facts(probes) -> Facts:
    return Facts({p.name: p.value for p in probes})


def probe_profile(profile, mountpoint: str, target,
                  timings: Optional[Timings] = None) -> Tuple[List[Any], Facts]:
    """Probe a mounted backing fs and ask the driver's Init for its verdict: the probes, and
    the facts that scenarios' expectations read. ``target`` is the kernel's facts (the
    ``facts`` of a ``probe-target`` record) or its probes. ``timings`` gets the seconds of
    ``probes``, ``features`` and ``driver_init``."""
    timings = Timings() if timings is None else timings
    with timings.phase("probes"):
        fs_probes = probe_mod.run_backing_probes(mountpoint)
    with timings.phase("features"):
        features = probe_features(mountpoint)  # one real mount per overlayfs feature
    fs_probes.append(features_probe(features))
    with timings.phase("driver_init"):
        verdict = probe_mod.driver_verdict(mountpoint)
    fs_probes.append(verdict.to_probe())
    target_facts = dict(target) if isinstance(target, Mapping) else dict(_facts(target))
    facts = Facts(dict(target_facts, **_facts(fs_probes)))
    # Expectations speak the lab's words: ACCEPTED / REFUSED / ERROR.
    facts["driver_init"] = verdict.outcome
    facts["driver_verdict"] = verdict.verdict
    # What expectations scale by: which profile, how many inodes, SELinux or not.
    facts["profile"] = profile.name
    facts["profile_tags"] = list(profile.tags)
    facts["fs_inodes"] = os.statvfs(mountpoint).f_files
    facts["selinux"] = os.path.isdir("/sys/fs/selinux")
    facts["overlay_xattr_read"] = _overlay_xattr_read(mountpoint)
    facts["overlay_features"] = features  # the probe's {feature: supported}, with every attempt
    return fs_probes, facts


def _overlay_xattr_read(path: str) -> str:
    """How lgetxattr("trusted.overlay.opaque") answers here, as copyDir asks it: ``ENODATA``
    (absent, fine) or the errno name that makes every child layer's copy fail (overlayfs
    before 6.7 says EOPNOTSUPP)."""
    import errno as errno_mod
    try:
        os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False)
        return "present"
    except OSError as err:
        if err.errno == errno_mod.EOPNOTSUPP:
            return "EOPNOTSUPP"  # errorcode[95] says ENOTSUP; the kernel's name is EOPNOTSUPP
        return errno_mod.errorcode.get(err.errno or 0, str(err.errno))


def cmd_probe_target(args: argparse.Namespace) -> int:
    probe_target(args.startup_seconds)
    return 0


def probe_target(startup: Optional[float]) -> Dict[str, Any]:
    """Probe the kernel, print its ``target`` record; returns its facts."""
    timings = Timings({"startup": startup} if startup is not None else {})
    with timings.phase("probes"):
        probes = probe_mod.run_target_probes()
    facts = dict(_facts(probes))
    emit(TargetRecord(probes=_probe_dicts(probes), facts=facts,
                      extra={"python": sys.version.split()[0], "uname": list(os.uname()),
                             "timings": dict(timings)}))
    return facts


def _load_profiles(args: argparse.Namespace):
    if args.profiles_b64:
        return parse_profiles(base64.b64decode(args.profiles_b64).decode("utf-8"))
    return load_profiles(args.profiles_file)


def _target_facts(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    if not args.target_facts_b64:
        return None
    try:
        facts = json.loads(base64.b64decode(args.target_facts_b64).decode("utf-8"))
    except ValueError:
        return None  # unreadable: probe instead
    return facts if isinstance(facts, dict) else None


def _devices(args: argparse.Namespace) -> Dict[str, str]:
    devices: Dict[str, str] = {}
    for spec in args.device:
        name, sep, dev = spec.partition("=")
        if sep:
            devices[name] = dev
        elif len(args.profile) == 1:
            devices[args.profile[0]] = spec
        else:
            raise SystemExit("--device %s: say which profile (PROFILE=DEV) when running several" % spec)
    return devices


def cmd_run(args: argparse.Namespace) -> int:
    # the kernel's facts whatever becomes of the run, as a probe-target agent of its own gives them
    probed = probe_target(args.startup_seconds) if args.probe_target else None
    if os.geteuid() != 0:  # say so once, not as a losetup/mount error per profile
        emit({"record": "error", "error": "the lab agent needs root (running as uid %d): it sets up loop "
                                          "devices, runs mkfs and mounts filesystems and overlays" % os.geteuid()})
        return 2
    profiles = _load_profiles(args)
    unknown = [p for p in args.profile if p not in profiles]
    if unknown:
        emit({"record": "error", "error": "unknown profile(s) %s (have: %s)" % (", ".join(unknown), ", ".join(profiles))})
        return 2
    catalogue = all_scenarios()
    wanted = args.scenario or list(catalogue)
    unknown = [s for s in wanted if s not in catalogue]
    if unknown:
        emit({"record": "error", "error": "unknown scenario(s): %s" % ", ".join(unknown)})
        return 2
    engines = args.engine or [DEFAULT_ENGINE]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        emit({"record": "error", "error": "unknown engine(s) %s (have: %s)" % (", ".join(unknown), ", ".join(ENGINES))})
        return 2
    devices = _devices(args)
    # The runner has probed this kernel already (probe-target) and hands its facts on;
    # probing again would cost seconds per agent in a TCG guest.
    target = probed if probed is not None else (_target_facts(args) or probe_mod.run_target_probes())
    for i, name in enumerate(args.profile):
        # the first profile's set-up waited for the interpreter and the imports
        startup = {"startup": args.startup_seconds} if i == 0 and args.startup_seconds is not None else {}
        run_profile(profiles[name], devices.get(name), wanted, catalogue, target, args.workdir,
                    list(dict.fromkeys(engines)), check_devices=args.check_devices, timings=Timings(startup),
                    console_marks=args.console_marks)
    return 0


def run_profile(profile, device: Optional[str], wanted: List[str], catalogue, target_probes,
                workdir: Optional[str], engines: Sequence[str] = (DEFAULT_ENGINE,),
                check_devices: bool = False, timings: Optional[Timings] = None,
                console_marks: bool = False) -> None:
    """Make one profile's backing fs, probe it, run the scenarios; records go to stdout.

    The port's own scenarios run when the port is among ``engines``; the ``engine`` group runs
    on each of ``engines``. With ``check_devices`` (a remote host's own disks), a device that
    is in use or holds someone else's filesystem is refused: the profile's cells are ERROR
    with the reason (:func:`overlaylab.agent.devices.device_problem`)."""
    classic = [s for s in wanted if catalogue[s].group != ENGINE_GROUP] if PORT_ENGINE in engines else []
    neutral = [catalogue[s] for s in wanted if catalogue[s].group == ENGINE_GROUP]
    own_workdir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="overlaylab-agent.")
    os.makedirs(workdir, exist_ok=True)
    # The marker (and its lease) let `overlaylab cleanup` find this directory's mounts and
    # loop devices if this process is killed before its teardown runs.
    lease = cleanup_mod.mark(workdir, "agent-dir", keep_dir=not own_workdir, profile=profile.name)
    started = time.monotonic()
    timings = Timings() if timings is None else timings
    klog = KernelLogCursor()
    try:
        try:
            problem = device_problem(device) if device and check_devices else None
            if problem:
                raise BackingFsUnavailable(profile.name, "device", problem)
            with make_backing_fs(profile, workdir, device=device) as bfs:
                for step, seconds in bfs.timings.items():
                    timings.add(step, seconds)
                fs_probes, facts = probe_profile(profile, bfs.mountpoint, target_probes, timings)
                with timings.phase("kmsg"):
                    dmesg = klog.read_new()
                emit(ProfileRecord(profile.name, fs=bfs.to_dict(), probes=_probe_dicts(fs_probes),
                                   facts=dict(facts), setup_seconds=round(time.monotonic() - started, 3),
                                   timings=dict(timings), dmesg=dmesg))
                scratch = os.path.join(workdir, "scratch")
                os.makedirs(scratch, exist_ok=True)
                for sid in classic:
                    sc = catalogue[sid]
                    _emit_start(profile.name, sid, PORT_ENGINE, console_marks)
                    cell = run_scenario(sc, bfs.mountpoint, facts, scratch, kernel_log=klog)
                    emit(cell.to_record(profile.name, sid, sc.group))
                for engine in engines if neutral else ():
                    for record in run_engine_cells(engine, neutral, bfs.mountpoint, facts, scratch, klog,
                                                   lambda sc, e=engine: _emit_start(profile.name, sc.id, e, console_marks)):
                        emit(record)
        except BackingFsUnavailable as err:
            _emit_unavailable(profile.name, [(catalogue[s], None) for s in classic] +
                              [(sc, engine) for engine in engines for sc in neutral], err, klog)
    finally:
        klog.close()
        if not mountutil.mounts_under(workdir):
            if own_workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(workdir, cleanup_mod.MARKER))
            cleanup_mod.release(lease)  # else the lease stays: cleanup finds what is left
    emit({"record": "done", "profile": profile.name, "seconds": round(time.monotonic() - started, 3)})


def _emit_start(profile: str, scenario: str, engine: str, console_marks: bool = False) -> None:
    if console_marks:  # first: the console outlives a panic, the ssh stream may not
        cellmark.write(profile, scenario, engine)
    emit({"record": "start", "profile": profile, "scenario": scenario, "engine": engine})


def _emit_unavailable(profile: str, cells: List[Tuple[Any, Optional[str]]], err: BackingFsUnavailable,
                      klog: KernelLogCursor) -> None:
    """The profile could not be made: every cell (scenario, engine) is UNSUPPORTED (the
    kernel's) or ERROR (the lab's)."""
    detail = err.to_dict()
    emit(ProfileRecord(profile, unavailable=detail, dmesg=err.dmesg or klog.read_new()))
    outcome = Outcome.ERROR if err.infrastructure else Outcome.UNSUPPORTED
    expected = Expectation(Outcome.UNSUPPORTED, "this kernel cannot make the %s profile (%s failed)" % (profile, err.step))
    for sc, engine in cells:
        emit(CellRecord(profile, sc.id, outcome.value, group=sc.group, expected=expected.outcome.value,
                        expected_why=expected.why, met=outcome == expected.outcome, error=str(err),
                        evidence={"backing_fs": detail}, engine=engine))


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove what dead agents of this target left (their owner is gone), one JSON line each."""
    for entry in cleanup_mod.cleanup(args.run, dry_run=args.dry_run):
        emit(dict(entry, record="cleanup"))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    startup = process_age()  # the interpreter, site and the imports: before any work
    parser = argparse.ArgumentParser(prog="python -m overlaylab.agent", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe-target", help="facts about this kernel")
    p.set_defaults(func=cmd_probe_target)
    r = sub.add_parser("run", help="make one profile's backing fs and run scenarios on it")
    r.add_argument("--profile", action="append", required=True, help="profile name (repeatable)")
    r.add_argument("--device", action="append", default=[],
                   help="PROFILE=DEV: a block device to format instead of a loop image (inside VMs); "
                        "a bare DEV applies to a single profile")
    r.add_argument("--check-devices", action="store_true",
                   help="the --device disks are the host's own: refuse one that is in use or holds a "
                        "filesystem the lab did not make (that profile's cells are ERROR)")
    r.add_argument("--console-marks", action="store_true",
                   help="also log each cell's start to /dev/kmsg for the console (a guest whose console "
                        "the runner reads: it names the cell a panic cut short)")
    r.add_argument("--scenario", action="append", default=[], help="scenario id (repeatable; default all)")
    r.add_argument("--engine", action="append", default=[],
                   help="storage engine for the engine scenarios (repeatable; default %s; one of %s)"
                        % (DEFAULT_ENGINE, ", ".join(ENGINES)))
    r.add_argument("--workdir", help="where images, mounts and scratch go (default: a new temp dir)")
    r.add_argument("--profiles-file", help="filesystems.toml to read (default: the project's)")
    r.add_argument("--profiles-b64", help="filesystems.toml content, base64 (for targets without the repo)")
    r.add_argument("--target-facts-b64", help="the kernel's facts from probe-target, base64 JSON "
                                               "(given by the runner: the kernel is not probed again)")
    r.add_argument("--probe-target", action="store_true",
                   help="first probe the kernel and print its target record, as probe-target does")
    r.add_argument("--run-id", help="the lab run this agent works for (recorded on what it makes)")
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("cleanup", help="remove what dead agents left (mounts, loop devices, work dirs)")
    c.add_argument("--run", default=None, help="only leftovers of this run")
    c.add_argument("--dry-run", action="store_true", help="list them only")
    c.set_defaults(func=cmd_cleanup)
    h = sub.add_parser("hold", help="hold a remote host's per-run directory until stdin closes, then "
                                    "stop the agents working in it and remove everything below it")
    h.add_argument("directory", help="the per-run directory (holds the shipped agent)")
    h.add_argument("--run", default="", help="the lab run it belongs to")
    h.set_defaults(func=lambda a: hold_mod.hold(a.directory, a.run, emit))
    args = parser.parse_args(argv)
    if getattr(args, "run_id", None):
        os.environ[cleanup_mod.RUN_ENV] = args.run_id
    # SIGTERM (a runner stopping, `timeout` expiring) unwinds like Ctrl-C: every backing fs,
    # loop device and mount is torn down by its context manager on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    args.startup_seconds = startup
    try:
        return profiled(args.command, lambda: args.func(args))
    except KeyboardInterrupt:
        emit({"record": "error", "error": "interrupted"})
        return 130


def _interrupt(signum, frame):
    # Unwind once; a second stop signal (Ctrl-C reaches us from the terminal *and* from the
    # runner) must not cut the teardown short and leak a mount or loop device.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt()


if __name__ == "__main__":
    sys.exit(main())
