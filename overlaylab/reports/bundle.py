"""Bug bundles: one ``.tar.gz`` per cell with everything a kernel or driver developer needs,
and ``overlaylab repro BUNDLE`` to re-run exactly that cell.

The archive holds one directory, ``overlaylab-bundle-<run>-<kernel>-<profile>-<scenario>/``:

    README.txt              what happened, how to reproduce, what each file is
    repro                   shell script: the one `overlaylab run` that re-runs this cell
    repro.json              the same, machine-readable, plus the bundled outcome
    cell.json               the cell's record(s) (one per --repeat attempt)
    scenario/log.txt        the scenario's log lines
    scenario/evidence.txt   error, kernel answer, errno, dmesg, driver log, traceback ...
    scenario/driver-status.txt   the driver's Status() rows
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
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

from .. import __version__
from ..lab.results import load_run, resolve_run_dir
from .model import (CellKey, CellView, RunReport, as_text, cell_id, evidence_sections, fs_sections,
                    parse_cell_id, probe_rows, recipe_lines, shell_join)

README_NAME = "README.txt"
REPRO_JSON = "repro.json"


class BundleError(Exception):
    pass


def bundle_name(run_id: str, key: CellKey) -> str:
    safe = "-".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", part) for part in key)
    return "overlaylab-bundle-%s-%s" % (run_id, safe)


def repro_argv(rep: RunReport, cv: CellView) -> List[str]:
    """``overlaylab run`` re-running exactly this cell on the same kernel and profile."""
    provider = cv.record.get("provider") or rep.target_record(cv.target).get("provider") or rep.run.meta.get("provider") or "auto"
    if provider not in ("auto", "local", "qemu", "vagrant"):
        provider = "auto"
    argv = ["overlaylab", "run", "--provider", provider, "-K", cv.target, "-p", "=" + cv.profile,
            "-k", "=" + cv.scenario]
    run_argv = list(rep.run.meta.get("argv") or [])
    if "--profiles-file" in run_argv:
        i = run_argv.index("--profiles-file")
        if i + 1 < len(run_argv):
            argv += ["--profiles-file", os.path.abspath(run_argv[i + 1])]
    return argv


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
        from ..lab.profiles import load_profiles, reproduce_commands
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


def build_files(rep: RunReport, key: CellKey) -> Tuple[str, Dict[str, str]]:
    cv = rep.cells.get(key)
    if cv is None:
        raise BundleError("run %s has no cell %s (it has e.g. %s)" % (
            rep.run_id, cell_id(key), ", ".join(c.id for c in list(rep.cells.values())[:3])))
    name = bundle_name(rep.run_id, key)
    argv = repro_argv(rep, cv)
    files: Dict[str, str] = {}
    files["repro"] = ("#!/bin/sh\n# Re-runs exactly one cell of run %s: kernel %s, profile %s, scenario %s.\n"
                      "# Bundled outcome: %s (expected %s). Extra arguments go to `overlaylab run`\n"
                      "# (e.g. --reports-dir DIR). `overlaylab repro THIS-BUNDLE` runs it and compares.\n"
                      "exec %s \"$@\"\n" % (rep.run_id, cv.target, cv.profile, cv.scenario, cv.outcome, cv.expected,
                                            shell_join(argv)))
    files[REPRO_JSON] = json.dumps({"argv": argv, "command": shell_join(argv), "run_id": rep.run_id,
                                    "cell": cv.id, "kernel": cv.target, "profile": cv.profile,
                                    "scenario": cv.scenario, "outcome": cv.outcome, "outcomes": cv.outcomes,
                                    "expected": cv.expected, "met": cv.met,
                                    "kernel_release": cv.kernel_release or rep.kernel_release(cv.target)},
                                   indent=2, sort_keys=True) + "\n"
    files["cell.json"] = json.dumps(cv.attempts if len(cv.attempts) > 1 else cv.record, indent=2, sort_keys=True,
                                    default=str) + "\n"
    files["scenario/log.txt"] = as_text(cv.record.get("log") or ["(the scenario logged nothing)"]) + "\n"
    files["scenario/evidence.txt"] = "\n\n".join("== %s\n%s" % (t, x) for t, x in evidence_sections(cv.record)) + "\n"
    status = (cv.record.get("evidence") or {}).get("driver_status")
    files["scenario/driver-status.txt"] = (as_text(status) if status else "(no driver status recorded)") + "\n"
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
    "repro.json": "the same command and the bundled outcome, for `overlaylab repro`",
    "cell.json": "the cell's result record(s) as stored in results.jsonl",
    "scenario/log.txt": "the scenario's log lines",
    "scenario/evidence.txt": "error, kernel answer, errno, dmesg, driver log, traceback and other evidence",
    "scenario/driver-status.txt": "the driver's Status() rows",
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
              "    overlaylab repro %s.tar.gz" % name, "",
              "Contents", "--------"]
    width = max(len(n) for n in list(files) + [README_NAME])
    for fname in sorted(list(files) + ([README_NAME] if README_NAME not in files else [])):
        size = len(files[fname].encode()) if fname in files else 0
        lines.append("  %-*s %7s  %s" % (width, fname, ("%d B" % size) if fname != README_NAME else "", _DESCRIBE.get(fname, "")))
    lines.append("")
    return "\n".join(lines)


def write_bundle(run_path: str, cell: str, output: Optional[str] = None) -> str:
    """Write the bundle of ``cell`` (KERNEL/PROFILE/SCENARIO) of the run at ``run_path``; return its path."""
    key = parse_cell_id(cell)
    rep = RunReport.from_run(load_run(run_path))
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

def read_bundle(path: str) -> Dict[str, Any]:
    """``repro.json`` of a bundle (a .tar.gz, or a directory it was unpacked into)."""
    if os.path.isdir(path):
        for root, _dirs, names in os.walk(path):
            if REPRO_JSON in names:
                with open(os.path.join(root, REPRO_JSON), "r", encoding="utf-8") as f:
                    return json.load(f)
        raise BundleError("no %s under %s" % (REPRO_JSON, path))
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar.getmembers():
                if member.isfile() and os.path.basename(member.name) == REPRO_JSON:
                    f = tar.extractfile(member)
                    assert f is not None
                    return json.loads(f.read().decode("utf-8"))
    except (tarfile.TarError, OSError) as err:
        raise BundleError("cannot read bundle %s: %s" % (path, err)) from None
    raise BundleError("%s is not an overlaylab bundle (no %s)" % (path, REPRO_JSON))


_RUN_LINE = re.compile(r"^run (\S+) \((\w+)\): (.+)$", re.M)


def run_repro(spec: Dict[str, Any], reports_dir: Optional[str] = None, timeout: float = 3600,
              echo=None) -> Dict[str, Any]:
    """Run a bundle's repro command (through this Python's overlaylab) and compare the outcome."""
    argv = list(spec["argv"])
    if argv[:1] != ["overlaylab"]:
        raise BundleError("unexpected repro command %r" % spec.get("command"))
    cmd = [sys.executable, "-m", "overlaylab"] + argv[1:]
    if reports_dir:
        cmd += ["--reports-dir", reports_dir]
    if echo:
        echo("$ " + shell_join(argv + (["--reports-dir", reports_dir] if reports_dir else [])))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    found = _RUN_LINE.findall(res.stdout)
    result: Dict[str, Any] = {"command": cmd, "returncode": res.returncode, "stdout": res.stdout,
                              "stderr": res.stderr, "bundled": spec.get("outcome"), "outcome": None,
                              "run_dir": None, "reproduced": False}
    if not found:
        result["problem"] = "the run did not report a run directory (exit %d)" % res.returncode
        return result
    run_id, _status, run_dir = found[-1]
    result["run_dir"] = run_dir.strip()
    rep = RunReport.from_run(load_run(result["run_dir"]))
    cv = rep.get(spec["kernel"], spec["profile"], spec["scenario"])
    if cv is None:
        result["problem"] = "run %s has no cell %s" % (run_id, spec["cell"])
        return result
    result.update(outcome=cv.outcome, met=cv.met, error=cv.error, run_id=run_id,
                  kernel_release=cv.kernel_release or rep.kernel_release(cv.target),
                  reproduced=cv.outcome == spec.get("outcome"))
    return result
