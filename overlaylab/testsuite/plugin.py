"""pytest plugin (entry point ``pytest11``): options and fixtures of the catalogue suite."""
from __future__ import annotations

import sys

import pytest


_cache = {}


def pytest_addoption(parser):
    group = parser.getgroup("overlaylab")
    group.addoption("--lab-profiles", default=None,
                    help="-k style expression over filesystem profiles (default: every profile, as "
                         "overlaylab run)")
    group.addoption("--lab-engines", action="append", default=[],
                    help="storage engines the engine scenarios run on, as overlaylab run --engine (a name, "
                         "'all' or a -k style expression; repeatable; default: every engine)")
    group.addoption("--lab-python", default=None,
                    help="python on the target (default: this interpreter for local://, else python3)")
    group.addoption("--lab-pythonpath", default=None, help="PYTHONPATH on the target (where overlaylab is)")
    group.addoption("--lab-timeout", type=float, default=900.0, help="seconds per profile")


def pytest_configure(config):
    # The cells carry run's JUnit properties (record_property); pytest writes them in every
    # junit_family but warns for xunit2, its default.
    config.addinivalue_line("filterwarnings",
                            "ignore:record_property is incompatible with junit_family:pytest.PytestWarning")


def pytest_generate_tests(metafunc):
    """One test per cell, as ``overlaylab run`` makes them: ``PROFILE-SCENARIO`` for the port's
    scenarios, ``PROFILE-SCENARIO-ENGINE`` for each engine of an engine scenario."""
    if {"lab_profile", "lab_scenario", "lab_engine"} <= set(metafunc.fixturenames):
        from overlaylab.agent.profiles import load_profiles
        from overlaylab.lab.matrix import Matrix, SelectionError, is_engine_scenario, select_engines, select_profiles
        from overlaylab.agent.scenario import all_scenarios
        profiles = select_profiles(load_profiles(), metafunc.config.getoption("--lab-profiles"))
        try:
            engines = select_engines(metafunc.config.getoption("--lab-engines"))
        except SelectionError as err:
            raise pytest.UsageError(str(err).replace("--engine", "--lab-engines", 1)) from None
        matrix = Matrix([], profiles, all_scenarios(), engines=engines)
        params = [(p, sid, engine) for p in profiles for sid, engine in matrix.runs_for("local")]
        metafunc.parametrize(("lab_profile", "lab_scenario", "lab_engine"), params,
                             ids=["-".join(c if is_engine_scenario(c[1]) else c[:2]) for c in params])


@pytest.fixture
def lab_cell(request, host, lab_profile, lab_scenario, lab_engine):
    """The agent's record for this cell on ``host`` (one agent run per host and profile)."""
    from overlaylab.agent.records import PORT_ENGINE
    from overlaylab.lab.matrix import is_engine_scenario
    from overlaylab.paths import PROJECT_ROOT
    from overlaylab.providers.session import agent_command
    from overlaylab.agent.records import parse_records
    from overlaylab.providers.transport import run_with_timeout
    config = request.config
    key = (host.backend.get_pytest_id(), lab_profile)
    if key not in _cache:
        local = host.backend.NAME == "local"
        python = config.getoption("--lab-python") or (sys.executable if local else "python3")
        env = {}
        pythonpath = config.getoption("--lab-pythonpath")
        if pythonpath or local:
            env["PYTHONPATH"] = pythonpath or str(PROJECT_ROOT)
        # Only the cells that survived -k/deselection for this profile.
        wanted = [item.callspec.params for item in request.session.items
                  if getattr(item, "callspec", None) is not None
                  and item.callspec.params.get("lab_profile") == lab_profile]
        args = ["run", "--profile", lab_profile]
        for sid in sorted({w["lab_scenario"] for w in wanted}):
            args += ["--scenario", sid]
        for engine in sorted({w["lab_engine"] for w in wanted if is_engine_scenario(w["lab_scenario"])}):
            args += ["--engine", engine]
        command = agent_command(args, python, env)
        result = run_with_timeout(host, command, config.getoption("--lab-timeout"))
        records, _ = parse_records(result.stdout)
        facts = {}
        for r in records:
            if r.get("record") == "profile" and isinstance(r.get("facts"), dict):
                facts = r["facts"]
        release = facts.get("kernel_release") or host.run("uname -r").stdout.strip()
        target = {"kernel": key[0], "kernel_release": release, "provider": "testinfra-%s" % host.backend.NAME}
        cells = {(r["scenario"], r.get("engine") or PORT_ENGINE): dict(r, **target)
                 for r in records if r.get("record") == "cell"}
        _cache[key] = (cells, result)
    cells, result = _cache[key]
    if (lab_scenario, lab_engine) not in cells:
        pytest.fail("no result for %s (engine %s) on %s: agent rc %s, stderr: %s" % (
            lab_scenario, lab_engine, lab_profile, result.rc, result.stderr[-2000:]))
    return cells[(lab_scenario, lab_engine)]


def cell_properties(cell):
    """The ``<property>`` names and values of ``overlaylab run``'s JUnit (reports/junit.py)."""
    return [("kernel", cell.get("kernel", "")), ("kernel_release", cell.get("kernel_release", "")),
            ("profile", cell.get("profile", "")), ("scenario", cell.get("scenario", "")),
            ("group", cell.get("group", "")), ("outcome", cell.get("outcome", "")),
            ("expected", cell.get("expected", "")), ("expected_why", cell.get("expected_why", "")),
            ("met", str(cell.get("outcome") == cell.get("expected")).lower()),
            ("provider", cell.get("provider", ""))]


def report_cell(cell):
    """Turn a cell into the test's outcome, as ``overlaylab run``'s JUnit does: not as expected
    fails; REFUSED/UNSUPPORTED as expected is skipped with the reason; a FAIL (or ERROR) as
    expected is an xfail with the reason; only a PASS as expected passes."""
    outcome, expected = cell.get("outcome"), cell.get("expected")
    why = cell.get("expected_why") or cell.get("error") or ""
    if outcome != expected:
        pytest.fail("got %s, expected %s (%s): %s\nevidence: %s" % (
            outcome, expected, cell.get("expected_why") or "default", cell.get("error"), cell.get("evidence")),
            pytrace=False)
    if outcome in ("REFUSED", "UNSUPPORTED"):
        pytest.skip("%s as expected: %s" % (outcome, why))
    if outcome in ("FAIL", "ERROR"):
        pytest.xfail("known failure (%s as expected): %s" % (outcome, why))
