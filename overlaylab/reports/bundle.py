"""Bug bundles: one ``.tar.gz`` per cell with everything a kernel or driver developer needs,
and ``overlaylab repro BUNDLE`` to re-run exactly that cell.

The archive holds one directory, ``overlaylab-bundle-<run>-<kernel>-<profile>-<scenario>[-<engine>]/``:

    README.txt              what happened, how to reproduce, what each file is
    repro                   shell script: the one `overlaylab run` that re-runs this cell
    repro.json              the same, machine-readable, plus the bundled outcome
    cell.json               the cell's record(s) (one per --repeat attempt)
    scenario/log.txt        the scenario's log lines
    scenario/evidence.txt   error, kernel answer, errno, dmesg, driver log, traceback ...
    scenario/driver-status.txt   the driver's Status() rows
    engine/version.txt      (a cell of an engine) the engine, its version and its verdict on the
                            backing filesystem
    engine/commands.txt     (a cell of an engine) the engine's commands, exit codes and stderr
    dmesg.txt               kernel messages: during the scenario and the filesystem's set-up
    kernel.txt              kernel release, uname, overlay/backing config symbols, overlay
                            module parameters, provider (qemu accel, boot time)
    filesystem/recipe.sh    the commands that really made the backing filesystem
    filesystem/remake.sh    how to make it again by hand on a spare DEVICE
    filesystem/info.txt     mkfs argv and output, xfs_info / dumpe2fs -h / btrfs show,
                            mount options, the mountinfo line, df
    filesystem/profile.json the profile record (what was made, probes, facts)
    probes.txt              every probe of the kernel and the filesystem, with evidence
    target.json             the kernel's target record
    run.json                the run's metadata (argv, host, times)
    versions.txt            overlaylab, Python, kernel, and the mkfs tools' versions
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import zlib
from typing import Any, Dict, List, Optional, Tuple

from .. import __version__
from ..lab.results import Run, load_run
from .model import (PORT_ENGINE, CellKey, CellView, RunReport, as_text, cell_id, evidence_sections, fs_sections,
                    parse_cell_id, probe_rows, recipe_lines, shell_join)

README_NAME = "README.txt"
REPRO_JSON = "repro.json"


class BundleError(Exception):
    pass


def bundle_name(run_id: str, key: CellKey) -> str:
    safe = "-".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", part) for part in cell_id(key).split("/"))
    return "overlaylab-bundle-%s-%s" % (run_id, safe)


PROVIDER_CHOICES = ("auto", "local", "qemu", "vagrant")  # `overlaylab run --provider`
BUNDLE_PROFILES = "profiles.toml"


def cell_provider(rep: RunReport, cv: CellView) -> str:
    """The provider that ran the cell, as recorded."""
    provider = cv.record.get("provider") or rep.target_record(cv.target).get("provider") or rep.run.meta.get("provider") or "auto"
    return provider if provider in PROVIDER_CHOICES else "auto"


def cell_run_args(kernel: str, profile: str, scenario: str, provider: str, repeat: int = 1,
                  profiles_file: Optional[str] = None, engine: str = PORT_ENGINE) -> List[str]:
    """The ``overlaylab run`` arguments (after ``overlaylab``) that run exactly one cell: what a
    bundle's ``repro`` script says and what ``overlaylab repro`` executes. ``--engine`` is given
    where the engine matters: a cell of another engine, or of a scenario that runs per engine."""
    from ..lab.matrix import is_engine_scenario
    args = ["run", "--provider", provider, "-K", kernel, "-p", "=" + profile, "-k", "=" + scenario]
    if engine != PORT_ENGINE or is_engine_scenario(scenario):
        args += ["--engine", engine]
    if repeat != 1:
        args += ["--repeat", str(repeat)]
    if profiles_file:
        args += ["--profiles-file", profiles_file]
    return args


def _run_profiles_file(rep: RunReport) -> Optional[str]:
    """The ``--profiles-file`` the run was given, if any."""
    run_argv = [str(a) for a in rep.run.meta.get("argv") or []]
    for i, arg in enumerate(run_argv):
        if arg == "--profiles-file" and i + 1 < len(run_argv):
            return run_argv[i + 1]
        if arg.startswith("--profiles-file="):
            return arg.split("=", 1)[1]
    return None


def repro_argv(rep: RunReport, cv: CellView) -> List[str]:
    """``overlaylab run`` re-running exactly this cell on the same kernel and profile (with the
    run's own profiles file, bundled as profiles.toml, when it had one)."""
    return ["overlaylab"] + cell_run_args(cv.target, cv.profile, cv.scenario, cell_provider(rep, cv),
                                          len(cv.attempts), BUNDLE_PROFILES if _run_profiles_file(rep) else None,
                                          cv.engine)


def _tool_versions() -> str:
    lines = []
    for argv in (["mkfs.ext4", "-V"], ["mkfs.xfs", "-V"], ["mkfs.btrfs", "--version"], ["losetup", "--version"],
                 ["mount", "--version"]):
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            text = (res.stdout + res.stderr).strip().splitlines()
            lines.append("%s: %s" % (" ".join(argv), text[0] if text else "rc %d" % res.returncode))
        except (OSError, subprocess.SubprocessError) as err:
            lines.append("%s: unavailable (%s)" % (" ".join(argv), err))
    return "\n".join(lines)


def _kernel_text(rep: RunReport, cv: CellView) -> str:
    trec = rep.target_record(cv.target)
    facts = trec.get("facts") or {}
    lines = ["kernel (catalogue entry): %s" % cv.target,
             "kernel release: %s" % (trec.get("kernel_release") or cv.kernel_release or "?"),
             "uname: %s" % " ".join(trec.get("uname") or []),
             "provider: %s" % trec.get("provider", cv.record.get("provider", "?"))]
    for key in ("accel", "boot_seconds", "up_seconds", "python", "error"):
        if trec.get(key) not in (None, ""):
            lines.append("%s: %s" % (key, trec[key]))
    if trec.get("disks"):
        lines.append("disks: %s" % json.dumps(trec["disks"], sort_keys=True))
    lines.append("overlay filesystem registered: %s" % facts.get("overlay_filesystem"))
    for title, key in (("overlay config", "kernel_config_overlay"), ("backing filesystem config", "kernel_config_backing"),
                       ("overlay module parameters", "overlay_params")):
        values = facts.get(key) or {}
        lines.append("")
        lines.append("%s:" % title)
        if not values:
            lines.append("  (not recorded)")
        for k, v in sorted(values.items()):
            lines.append("  %s=%s" % (k, v))
    probes = trec.get("probes") or {}
    for name in ("kernel_config_overlay", "kernel_config_backing"):
        if isinstance(probes.get(name), dict) and probes[name].get("evidence"):
            lines.append("(%s %s)" % (name, probes[name]["evidence"]))
    other = {k: v for k, v in facts.items() if k not in ("kernel_config_overlay", "kernel_config_backing", "overlay_params")}
    if other:
        lines.append("")
        lines.append("other target facts:")
        for k, v in sorted(other.items()):
            lines.append("  %s: %s" % (k, json.dumps(v, sort_keys=True, default=str)))
    return "\n".join(lines) + "\n"


def _dmesg_text(rep: RunReport, cv: CellView) -> str:
    prec = rep.profile_record(cv.target, cv.profile)
    out = []
    for a in cv.attempts:
        ev = a.get("evidence") or {}
        lines = list(ev.get("dmesg") or [])
        bf = ev.get("backing_fs") or {}
        if isinstance(bf, dict):
            lines += list(bf.get("dmesg") or [])
        suffix = " (attempt %s)" % a.get("attempt") if len(cv.attempts) > 1 else ""
        out.append("== during the scenario%s" % suffix)
        out.extend(lines or ["(no kernel messages)"])
        out.append("")
    out.append("== during the backing filesystem's set-up (mkfs, mount, probes)")
    out.extend(list(prec.get("dmesg") or []) or ["(no kernel messages)"])
    return "\n".join(out) + "\n"


def _filesystem_files(rep: RunReport, cv: CellView) -> Dict[str, str]:
    prec = rep.profile_record(cv.target, cv.profile)
    files: Dict[str, str] = {}
    fs = prec.get("fs") or (prec.get("unavailable") or {})
    lines = recipe_lines(fs)
    files["filesystem/recipe.sh"] = ("#!/bin/sh\n# The commands that made the %s backing filesystem in run %s, as run\n"
                                     "# (paths are the agent's temporary ones).\n%s\n" % (
                                         cv.profile, rep.run_id, "\n".join(lines) or "# (no recipe recorded)"))
    files["filesystem/info.txt"] = "\n\n".join("== %s\n%s" % (title, text) for title, text in fs_sections(prec)) + "\n"
    files["filesystem/profile.json"] = json.dumps(prec, indent=2, sort_keys=True, default=str) + "\n"
    try:
        from ..agent.profiles import load_profiles
        from ..agent.recipes import reproduce_commands
        profile = load_profiles().get(cv.profile)
        if profile is not None:
            files["filesystem/remake.sh"] = (
                "#!/bin/sh\n# Make the %s profile again by hand on a spare block device (DESTROYS its data).\n"
                "# Usage: sh remake.sh DEVICE MOUNTPOINT\nset -e\nDEVICE=${1:?block device}\nMNT=${2:?mountpoint}\n%s\n" % (
                    cv.profile, "\n".join(reproduce_commands(profile, "@@DEVICE@@", "@@MNT@@"))
                    .replace("@@DEVICE@@", '"$DEVICE"').replace("@@MNT@@", '"$MNT"')))
    except Exception:  # the catalogue may have changed since the run; the recipe above still holds
        pass
    return files


def _engine_files(cv: CellView) -> Dict[str, str]:
    """The engine's version, verdict and command log, from each attempt's ``evidence["engine"]``
    (what :meth:`EngineSession.evidence` recorded); nothing for a port cell."""
    if cv.engine == PORT_ENGINE:
        return {}
    version, commands = [], []
    for a in cv.attempts:
        ev = (a.get("evidence") or {}).get("engine")
        ev = ev if isinstance(ev, dict) else {}
        head = "== attempt %s\n" % a.get("attempt") if len(cv.attempts) > 1 else ""
        verdict = ev.get("verdict") if isinstance(ev.get("verdict"), dict) else {}
        version.append(head + "engine: %s\nversion: %s\nverdict: %s%s\n%s" % (
            ev.get("engine") or cv.engine, ev.get("version") or "(not recorded)",
            {True: "accepted", False: "refused"}.get(verdict.get("accepted"), "(not recorded)"),
            " — " + str(verdict["message"]) if verdict.get("message") else "",
            "unavailable here: %s\n" % ev["unavailable"] if ev.get("unavailable") else ""))
        lines = []
        for cmd in ev.get("commands") or []:
            if not isinstance(cmd, dict):
                continue
            lines.append("$ %s   # rc %s, %s s" % (shell_join([str(w) for w in cmd.get("argv") or []]),
                                                    cmd.get("rc"), cmd.get("seconds")))
            lines += ["  " + line for line in str(cmd.get("stderr") or "").splitlines()]
        commands.append(head + ("\n".join(lines) if lines else "(no engine commands recorded)") + "\n")
    return {"engine/version.txt": "\n".join(version), "engine/commands.txt": "\n".join(commands)}


def build_files(rep: RunReport, key: CellKey) -> Tuple[str, Dict[str, str]]:
    cv = rep.cells.get(key)
    if cv is None:
        raise BundleError("run %s has no cell %s (it has e.g. %s)" % (
            rep.run_id, cell_id(key), ", ".join(c.id for c in list(rep.cells.values())[:3])))
    name = bundle_name(rep.run_id, key)
    argv = repro_argv(rep, cv)
    files: Dict[str, str] = {}
    profiles_src = _run_profiles_file(rep)
    script_argv = shell_join(argv)
    trust_note = ""
    if profiles_src:
        try:
            with open(profiles_src, "r", encoding="utf-8") as f:
                files[BUNDLE_PROFILES] = f.read()
        except (OSError, ValueError) as err:
            raise BundleError("run %s used --profiles-file %s, which cannot be read to bundle it: %s" % (
                rep.run_id, profiles_src, getattr(err, "strerror", None) or err)) from None
        script_argv = script_argv.replace(shell_join([BUNDLE_PROFILES]), '"$(dirname "$0")/%s"' % BUNDLE_PROFILES)
        trust_note = ("# The run had its own filesystem profiles, bundled as %s: their mkfs and mount\n"
                      "# commands run as root. Read that file before running this script.\n" % BUNDLE_PROFILES)
    files["repro"] = ("#!/bin/sh\n# Re-runs exactly one cell of run %s: kernel %s, profile %s, scenario %s, engine %s.\n"
                      "# Bundled outcome: %s (expected %s). Extra arguments go to `overlaylab run`\n"
                      "# (e.g. --reports-dir DIR). `overlaylab repro THIS-BUNDLE` runs it and compares.\n%s"
                      "exec %s \"$@\"\n" % (rep.run_id, cv.target, cv.profile, cv.scenario, cv.engine,
                                            cv.outcome, cv.expected,
                                            trust_note, script_argv))
    # `overlaylab repro` reads only the fields (kernel, profile, scenario, engine, provider,
    # repeat, profiles_file) and rebuilds the command from them; "command" is for people.
    files[REPRO_JSON] = json.dumps({"command": shell_join(argv), "run_id": rep.run_id,
                                    "cell": cv.id, "kernel": cv.target, "profile": cv.profile,
                                    "scenario": cv.scenario, "engine": cv.engine, "provider": cell_provider(rep, cv),
                                    "repeat": len(cv.attempts), "profiles_file": BUNDLE_PROFILES if profiles_src else None,
                                    "outcome": cv.outcome, "outcomes": cv.outcomes,
                                    "expected": cv.expected, "met": cv.met,
                                    "kernel_release": cv.kernel_release or rep.kernel_release(cv.target)},
                                   indent=2, sort_keys=True) + "\n"
    files["cell.json"] = json.dumps(cv.attempts if len(cv.attempts) > 1 else cv.record, indent=2, sort_keys=True,
                                    default=str) + "\n"
    files["scenario/log.txt"] = as_text(cv.record.get("log") or ["(the scenario logged nothing)"]) + "\n"
    files["scenario/evidence.txt"] = "\n\n".join("== %s\n%s" % (t, x) for t, x in evidence_sections(cv.record)) + "\n"
    status = (cv.record.get("evidence") or {}).get("driver_status")
    files["scenario/driver-status.txt"] = (as_text(status) if status else "(no driver status recorded)") + "\n"
    files.update(_engine_files(cv))
    files["dmesg.txt"] = _dmesg_text(rep, cv)
    files["kernel.txt"] = _kernel_text(rep, cv)
    files.update(_filesystem_files(rep, cv))
    prec = rep.profile_record(cv.target, cv.profile)
    probes = probe_rows(rep.target_record(cv.target), prec)
    files["probes.txt"] = "\n".join("%s = %s\n    %s" % (n, v, e.replace("\n", "\n    ")) for n, v, e in probes) + "\n"
    files["target.json"] = json.dumps(rep.target_record(cv.target), indent=2, sort_keys=True, default=str) + "\n"
    files["run.json"] = json.dumps(rep.run.meta, indent=2, sort_keys=True, default=str) + "\n"
    host = rep.run.meta.get("host") or {}
    files["versions.txt"] = (
        "at the run (%s):\n  overlaylab %s\n  host %s, kernel %s, %s, Python %s\n  target Python %s\n\n"
        "at bundle time (%s, this host):\n  overlaylab %s, Python %s\n%s\n" % (
            rep.run.meta.get("started", "?"), host.get("overlaylab", "?"), host.get("hostname", "?"),
            host.get("kernel", "?"), host.get("machine", "?"), host.get("python", "?"),
            rep.target_record(cv.target).get("python", "?"), time.strftime("%Y-%m-%dT%H:%M:%S%z"), __version__,
            sys.version.split()[0], "\n".join("  " + l for l in _tool_versions().splitlines())))
    files[README_NAME] = _readme(rep, cv, name, argv, files)
    return name, files


_DESCRIBE = {
    "README.txt": "this file",
    "repro": "the one command that re-runs exactly this cell (shell script)",
    "repro.json": "the cell's fields (kernel, profile, scenario, engine, provider, repeat) and the bundled outcome, "
                  "for `overlaylab repro`",
    "profiles.toml": "the run's own --profiles-file (its mkfs commands run as root: read it before use)",
    "cell.json": "the cell's result record(s) as stored in results.jsonl",
    "scenario/log.txt": "the scenario's log lines",
    "scenario/evidence.txt": "error, kernel answer, errno, dmesg, driver log, traceback and other evidence",
    "scenario/driver-status.txt": "the driver's Status() rows",
    "engine/version.txt": "the engine, its version and its verdict on the backing filesystem",
    "engine/commands.txt": "the engine's commands as run (argv, exit code, seconds, stderr)",
    "dmesg.txt": "kernel messages during the scenario and during the filesystem's set-up",
    "kernel.txt": "kernel release, uname, overlay/backing-fs config symbols, overlay module parameters",
    "filesystem/recipe.sh": "the commands that really made the backing filesystem (mkfs argv, mount)",
    "filesystem/remake.sh": "how to make the same filesystem by hand on a spare device",
    "filesystem/info.txt": "mkfs options and output, xfs_info / dumpe2fs -h / btrfs show, mount options, mountinfo",
    "filesystem/profile.json": "the profile record: what was made, its probes and facts",
    "probes.txt": "every probe of the kernel and the filesystem, with its evidence",
    "target.json": "the kernel's target record",
    "run.json": "the run's metadata (argv, host, start and end)",
    "versions.txt": "overlaylab, Python and kernel versions; mkfs tool versions",
}


def _readme(rep: RunReport, cv: CellView, name: str, argv: List[str], files: Dict[str, str]) -> str:
    prec = rep.profile_record(cv.target, cv.profile)
    info = ((prec.get("fs") or {}).get("info") or {})
    desc = (info.get("profile") or {}).get("description", "")
    lines = ["overlaylab bug bundle", "=" * 21, "",
             "cell      %s" % cv.id,
             "run       %s (%s, provider %s)" % (rep.run_id, rep.run.meta.get("started", "?"), cv.record.get("provider", "?")),
             "kernel    %s, release %s" % (cv.target, cv.kernel_release or rep.kernel_release(cv.target)),
             "profile   %s%s" % (cv.profile, " — " + desc if desc else ""),
             "scenario  %s (group %s)" % (cv.scenario, cv.group),
             "engine    %s" % cv.engine,
             "outcome   %s%s" % (cv.outcome, "" if len(cv.attempts) == 1 else " — " + cv.rate_text()),
             "expected  %s%s" % (cv.expected, " — " + cv.expected_why if cv.expected_why else ""),
             "verdict   %s" % ("as expected" if cv.met else "NOT as expected"),
             "duration  %.3f s" % cv.duration, ""]
    if cv.error:
        lines += ["error:", "  " + cv.error.replace("\n", "\n  "), ""]
    lines += ["Reproduce", "---------",
              "On a machine with overlaylab installed (as root; the local provider makes the backing",
              "filesystem on a loop device and removes it afterwards):", "",
              "    sh repro                      # or:", "    %s" % shell_join(argv), "",
              "or let overlaylab run it and compare the outcome with this bundle's:", "",
              "    overlaylab repro %s.tar.gz" % name, ""]
    if BUNDLE_PROFILES in files:
        lines += ["The profile comes from the run's own profiles file, bundled as %s: its mkfs and" % BUNDLE_PROFILES,
                  "mount commands run as root, so read it first. `overlaylab repro` uses it only when",
                  "given --trust-bundle-profiles (or give it --profiles-file FILE of your own).", ""]
    lines += ["Contents", "--------"]
    width = max(len(n) for n in list(files) + [README_NAME])
    for fname in sorted(list(files) + ([README_NAME] if README_NAME not in files else [])):
        size = len(files[fname].encode()) if fname in files else 0
        lines.append("  %-*s %7s  %s" % (width, fname, ("%d B" % size) if fname != README_NAME else "", _DESCRIBE.get(fname, "")))
    lines.append("")
    return "\n".join(lines)


def write_bundle(run_path: str, cell: str, output: Optional[str] = None, run: Optional[Run] = None) -> str:
    """Write the bundle of ``cell`` (KERNEL/PROFILE/SCENARIO[/ENGINE]) of the run at ``run_path``; return its path."""
    key = parse_cell_id(cell)
    rep = RunReport.from_run(run if run is not None else load_run(run_path))
    name, files = build_files(rep, key)
    if output is None:
        output = os.path.join(run_path, "bundles")
    if os.path.isdir(output) or output.endswith(os.sep) or not output.endswith((".tar.gz", ".tgz")):
        os.makedirs(output, exist_ok=True)
        output = os.path.join(output, name + ".tar.gz")
    else:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    now = time.time()
    tmp = output + ".tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        dir_info = tarfile.TarInfo(name)
        dir_info.type = tarfile.DIRTYPE
        dir_info.mode = 0o755
        dir_info.mtime = now
        tar.addfile(dir_info)
        for fname in [README_NAME] + sorted(f for f in files if f != README_NAME):
            data = files[fname].encode("utf-8")
            info = tarfile.TarInfo("%s/%s" % (name, fname))
            info.size = len(data)
            info.mtime = now
            info.mode = 0o755 if fname in ("repro",) or fname.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, output)
    return output


# --- repro --------------------------------------------------------------------------------
#
# A bundle comes from someone else. `overlaylab repro` never executes a command taken from it:
# it reads the cell's fields, checks each against what this machine knows (the kernel
# catalogue, the profiles, the scenario catalogue, the engines, the provider registry) and rebuilds the
# command with cell_run_args(), the same arguments the bundle's `repro` script gives `run`.

MAX_MEMBERS = 200              # a real bundle has ~20 files
MAX_JSON_BYTES = 1 << 20       # repro.json and profiles.toml are a few KiB
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
_REQUIRED_FIELDS = ("kernel", "profile", "scenario", "outcome")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), "null" if value is None else type(value).__name__)


def _check_member(path: str, member: tarfile.TarInfo) -> None:
    """Refuse a tar member that could not be unpacked safely where it is (a real bundle holds
    one directory of regular files)."""
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or os.path.isabs(name):
        raise BundleError("%s is not a safe bundle: member %r has an absolute path" % (path, name))
    if ".." in parts:
        raise BundleError("%s is not a safe bundle: member %r climbs out with '..'" % (path, name))
    if member.issym() or member.islnk():
        raise BundleError("%s is not a safe bundle: member %r is a %s (to %r)" % (
            path, name, "symlink" if member.issym() else "hard link", member.linkname))
    if not (member.isfile() or member.isdir()):
        raise BundleError("%s is not a safe bundle: member %r is not a regular file or directory" % (path, name))


def _read_tar(path: str) -> Tuple[Dict[str, Any], Optional[str]]:
    if os.path.getsize(path) == 0:
        raise BundleError("%s is not an overlaylab bundle (an empty file)" % path)
    try:
        tar = tarfile.open(path, "r:*")
    except tarfile.ReadError:
        raise BundleError("%s is not an overlaylab bundle (not a .tar.gz, nor any tar file)" % path) from None
    except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error) as err:
        raise BundleError("%s is not an overlaylab bundle (cannot open it: %s)" % (path, str(err) or type(err).__name__)) from None
    with tar:
        found: Dict[str, tarfile.TarInfo] = {}
        try:
            count = 0
            for member in tar:
                count += 1
                if count > MAX_MEMBERS:
                    raise BundleError("%s is not an overlaylab bundle (more than %d members)" % (path, MAX_MEMBERS))
                _check_member(path, member)
                base = member.name.rstrip("/").rsplit("/", 1)[-1]
                if member.isfile() and base in (REPRO_JSON, BUNDLE_PROFILES):
                    if base in found:
                        raise BundleError("%s is not an overlaylab bundle (two %s: %r and %r)" % (
                            path, base, found[base].name, member.name))
                    found[base] = member
            if REPRO_JSON not in found:
                raise BundleError("%s is not an overlaylab bundle (no %s in it)" % (path, REPRO_JSON))

            def read(member: tarfile.TarInfo) -> bytes:
                if member.size > MAX_JSON_BYTES:
                    raise BundleError("%s: %s is %d bytes, too large for a bundle" % (path, member.name, member.size))
                f = tar.extractfile(member)
                return f.read() if f is not None else b""
            spec = _parse_spec(path, read(found[REPRO_JSON]))
            text = _decode(path, BUNDLE_PROFILES, read(found[BUNDLE_PROFILES])) if BUNDLE_PROFILES in found else None
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise BundleError("%s is not a readable bundle (%s)" % (path, str(err) or type(err).__name__)) from None
    return spec, text


def _read_file_nofollow(path: str, where: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise BundleError("%s: cannot read %s: %s" % (where, os.path.basename(path), err.strerror)) from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise BundleError("%s: %s is too large for a bundle" % (where, os.path.basename(path)))
    return data


def _read_dir(path: str) -> Tuple[Dict[str, Any], Optional[str]]:
    found: Dict[str, str] = {}
    seen = 0
    for root, dirs, names in os.walk(path):
        seen += len(dirs) + len(names)
        if seen > MAX_MEMBERS:
            raise BundleError("%s is not an overlaylab bundle (more than %d entries)" % (path, MAX_MEMBERS))
        for n in dirs + names:
            if os.path.islink(os.path.join(root, n)):
                raise BundleError("%s is not a safe bundle: %r is a symlink" % (
                    path, os.path.relpath(os.path.join(root, n), path)))
        for base in (REPRO_JSON, BUNDLE_PROFILES):
            if base in names:
                if base in found:
                    raise BundleError("%s is not an overlaylab bundle (two %s)" % (path, base))
                found[base] = os.path.join(root, base)
    if REPRO_JSON not in found:
        raise BundleError("%s is not an overlaylab bundle (no %s under it)" % (path, REPRO_JSON))
    spec = _parse_spec(path, _read_file_nofollow(found[REPRO_JSON], path))
    text = None
    if BUNDLE_PROFILES in found:
        text = _decode(path, BUNDLE_PROFILES, _read_file_nofollow(found[BUNDLE_PROFILES], path))
    return spec, text


def _decode(path: str, what: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError("%s: %s is not UTF-8 text" % (path, what)) from None


def _parse_spec(path: str, data: bytes) -> Dict[str, Any]:
    """repro.json's fields, their presence and types checked (not yet their values)."""
    try:
        spec = json.loads(_decode(path, REPRO_JSON, data))
    except ValueError as err:
        raise BundleError("%s: %s is not JSON (%s)" % (path, REPRO_JSON, err)) from None
    if not isinstance(spec, dict):
        raise BundleError("%s: %s is %s, not an object" % (path, REPRO_JSON, _kind(spec)))
    missing = [k for k in _REQUIRED_FIELDS if k not in spec]
    if missing:
        raise BundleError("%s: %s lacks %s" % (path, REPRO_JSON, ", ".join(missing)))
    for key in _REQUIRED_FIELDS + ("provider", "run_id", "cell", "profiles_file", "engine"):
        value = spec.get(key)
        if key in _REQUIRED_FIELDS or value is not None:
            if not isinstance(value, str):
                raise BundleError("%s: %s field %r is %s, not a string" % (path, REPRO_JSON, key, _kind(value)))
    repeat = spec.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        raise BundleError("%s: %s field 'repeat' must be a positive whole number, not %s" % (
            path, REPRO_JSON, json.dumps(repeat)))
    return spec


def _suggest(name: str, known: List[str]) -> str:
    from ..hints import close_matches
    close = close_matches(name, known, n=1)
    return ("; did you mean %s?" % close[0]) if close else ("; known: %s" % ", ".join(known[:12]))


def _known(path: str, field_name: str, value: str, known: List[str], where: str) -> None:
    if not _SAFE_NAME.match(value):
        raise BundleError("%s: %s %r is not a name (letters, digits, . _ + -)" % (path, field_name, value))
    if value not in known:
        raise BundleError("%s: unknown %s %r in %s%s" % (path, field_name, value, where, _suggest(value, known)))


def read_bundle(path: str, profiles_file: Optional[str] = None, trust_bundle_profiles: bool = False,
                reports_dir: Optional[str] = None, write_profiles: bool = True) -> Dict[str, Any]:
    """A bundle's cell, checked field by field, as a dict with ``args``: the ``overlaylab run``
    arguments that re-run it (from :func:`cell_run_args`, never from the bundle's command).

    ``path`` is a .tar.gz or a directory it was unpacked into. Raises :class:`BundleError`
    (one line) for anything that is not a well-formed bundle of a cell this machine knows.
    ``profiles_file`` is the caller's own profiles file; a bundle that brings its own
    (``profiles.toml``) is refused unless ``trust_bundle_profiles``, whose copy is then written
    to ``<reports-dir>/bundle-profiles/`` (content-addressed) and named in ``args``.
    """
    if os.path.isdir(path):
        spec, bundled_profiles = _read_dir(path)
    elif os.path.isfile(path):
        spec, bundled_profiles = _read_tar(path)
    elif os.path.lexists(path):
        raise BundleError("%s is not an overlaylab bundle (not a file or directory)" % path)
    else:
        raise BundleError("no bundle %s (no such file or directory)" % path)
    spec = dict(spec)
    provider = spec.get("provider") or "auto"   # bundles written before the field was recorded
    if provider not in PROVIDER_CHOICES:
        from ..providers import PROVIDERS
        raise BundleError("%s: unknown provider %r (have: %s)" % (path, provider, ", ".join(["auto"] + sorted(PROVIDERS))))
    try:
        if provider == "vagrant":
            from ..providers.vagrant.boxes import load_catalogue
            kernels, where = list(load_catalogue().boxes), "the box catalogue"
        else:
            from ..lab.matrix import catalogue_kernels
            kernels, where = catalogue_kernels() + ["local"], "the kernel catalogue"
    except (OSError, ValueError, KeyError) as err:
        raise BundleError("cannot check the bundle's kernel: the catalogue cannot be read: %s" % err) from None
    _known(path, "kernel", spec["kernel"], kernels, where)
    from ..agent.profiles import ProfileError, default_profiles_path, load_profiles, parse_profiles
    from ..lab.matrix import select_profiles
    from ..lab.matrix import select_engines, select_scenarios
    from ..agent.scenario import all_scenarios
    _known(path, "scenario", spec["scenario"], list(all_scenarios()), "the scenario catalogue")
    from ..agent.engines import engine_names
    engine = spec.get("engine") or PORT_ENGINE  # bundles written before engines: the port
    _known(path, "engine", engine, engine_names(), "the engine registry")
    used_profiles: Optional[str] = None
    if profiles_file:
        used_profiles = os.path.abspath(profiles_file)
        try:
            profiles = load_profiles(used_profiles)
        except (OSError, ValueError) as err:
            raise BundleError("--profiles-file %s: %s" % (profiles_file, getattr(err, "strerror", None) or err)) from None
        where = used_profiles
    elif spec.get("profiles_file"):
        if bundled_profiles is None:
            raise BundleError("%s: %s names profiles file %r, which the bundle does not hold" % (
                path, REPRO_JSON, spec["profiles_file"]))
        if not trust_bundle_profiles:
            raise BundleError("%s brings its own filesystem profiles (%s), whose mkfs and mount commands would run "
                              "as root: read them, then pass --trust-bundle-profiles, or --profiles-file FILE for "
                              "your own" % (path, BUNDLE_PROFILES))
        try:
            profiles = parse_profiles(bundled_profiles)
        except (ValueError, ProfileError) as err:
            raise BundleError("%s: its %s is not a profiles file: %s" % (path, BUNDLE_PROFILES, err)) from None
        import hashlib
        from ..lab.results import default_reports_dir
        used_profiles = os.path.abspath(os.path.join(reports_dir or default_reports_dir(), "bundle-profiles",
                                                     hashlib.sha256(bundled_profiles.encode()).hexdigest()[:16] + ".toml"))
        spec["trusted_profiles"] = used_profiles
        if write_profiles:
            os.makedirs(os.path.dirname(used_profiles), exist_ok=True)
            tmp = used_profiles + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(bundled_profiles)
            os.replace(tmp, used_profiles)
        where = "the bundle's %s" % BUNDLE_PROFILES
    else:
        where = str(default_profiles_path())
        profiles = load_profiles()
    _known(path, "profile", spec["profile"], list(profiles), where)
    from .model import ALL_OUTCOMES
    if spec.get("run_id") is not None and not _SAFE_NAME.match(spec["run_id"]):
        raise BundleError("%s: run_id %r is not a run id" % (path, spec["run_id"]))
    if spec["outcome"] not in ALL_OUTCOMES:
        raise BundleError("%s: outcome %r is not one of %s" % (path, spec["outcome"], ", ".join(ALL_OUTCOMES)))
    args = cell_run_args(spec["kernel"], spec["profile"], spec["scenario"], provider, spec.get("repeat", 1), used_profiles,
                         engine)
    cell = cell_id((spec["kernel"], spec["profile"], spec["scenario"], engine))
    # The same selection `run` makes from these arguments must give exactly this one cell.
    if (list(select_profiles(profiles, ["=" + spec["profile"]])) != [spec["profile"]]
            or list(select_scenarios(["=" + spec["scenario"]])) != [spec["scenario"]]
            or select_engines([engine]) != [engine]):  # pragma: no cover
        raise BundleError("%s: %s does not select exactly one cell" % (path, cell))
    spec.update(provider=provider, repeat=spec.get("repeat", 1), args=args, engine=engine, cell=cell,
                run_id=spec.get("run_id") or "?")
    return spec


def repro_command(spec: Dict[str, Any], reports_dir: Optional[str] = None) -> List[str]:
    """Exactly what :func:`run_repro` executes (and ``repro --dry-run`` prints)."""
    cmd = [sys.executable, "-m", "overlaylab"] + list(spec["args"])
    if reports_dir:
        cmd += ["--reports-dir", reports_dir]
    return cmd


_RUN_LINE = re.compile(r"^run (\S+) \((\w+)\): (.+)$", re.M)


def run_repro(spec: Dict[str, Any], reports_dir: Optional[str] = None, timeout: float = 3600,
              echo=None) -> Dict[str, Any]:
    """Run a checked bundle's cell (see :func:`read_bundle`) and compare the outcome."""
    cmd = repro_command(spec, reports_dir)
    if echo:
        echo("$ " + shell_join(cmd))
    result: Dict[str, Any] = {"command": cmd, "returncode": None, "stdout": "", "stderr": "",
                              "bundled": spec.get("outcome"), "outcome": None, "run_dir": None, "reproduced": False}
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        result["problem"] = "the run did not finish in %d s" % timeout
        result["stdout"] = (err.stdout or b"").decode("utf-8", "replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        return result
    result.update(returncode=res.returncode, stdout=res.stdout, stderr=res.stderr)
    found = _RUN_LINE.findall(res.stdout)
    if not found:
        result["problem"] = "the run did not report a run directory (exit %d)" % res.returncode
        return result
    run_id, _status, run_dir = found[-1]
    result["run_dir"] = run_dir.strip()
    try:
        rep = RunReport.from_run(load_run(result["run_dir"]))
    except (OSError, ValueError) as err:
        result["problem"] = "cannot read the re-run: %s" % err
        return result
    cv = rep.get(spec["kernel"], spec["profile"], spec["scenario"], spec.get("engine") or PORT_ENGINE)
    if cv is None:
        result["problem"] = "run %s has no cell %s" % (run_id, spec["cell"])
        return result
    result.update(outcome=cv.outcome, met=cv.met, error=cv.error, run_id=run_id,
                  kernel_release=cv.kernel_release or rep.kernel_release(cv.target),
                  reproduced=cv.outcome == spec.get("outcome"))
    return result
