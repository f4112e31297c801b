"""Every report's work grows with the cells, not with their square: the renderers ask the fold
for the axes, a kernel's cells and the engine section per row, and the fold answers from what
it computed once (RunReport._once). Before, a 13,120-cell run took 236 s to report and a
2,574-cell one 5 s. Counted, not timed: how often the fold reads each cell's record, for a run
and for one four times its size (more kernels)."""
from __future__ import annotations

from overlaylab.lab.results import Run
from overlaylab.reports import RunReport, render
from overlaylab.reports import model
from overlaylab.reports.known import KnownIssues

PROFILES = ("ext4", "xfs", "tmpfs")
SCENARIOS = ("create-empty", "diff-size", "whiteouts")
ENGINE_SCENARIOS = ("image-whiteouts", "delete-in-container")
ENGINES = ("port", "containers-storage", "docker-overlay2")


def _run(kernels: int) -> Run:
    run = Run(path="/nonexistent", meta={"run_id": "scaling", "status": "finished"})
    for k in range(kernels):
        target = "k%d" % k
        run.add({"record": "target", "target": target, "kernel_release": "6.%d.0" % k})
        for p in PROFILES:
            for s in SCENARIOS:
                run.add({"record": "cell", "target": target, "profile": p, "scenario": s, "group": "lifecycle",
                         "outcome": "FAIL" if s == "whiteouts" else "PASS", "expected": "PASS", "met": s != "whiteouts",
                         "error": "it failed at /tmp/overlaylab-agent.x/y" if s == "whiteouts" else ""})
            for s in ENGINE_SCENARIOS:
                for e in ENGINES:
                    run.add({"record": "cell", "target": target, "profile": p, "scenario": s, "group": "engine",
                             "engine": None if e == "port" else e, "outcome": "PASS" if e != "docker-overlay2" else "FAIL",
                             "expected": "PASS", "met": e != "docker-overlay2", "error": ""})
    return run


def _record_reads(kernels: int, monkeypatch) -> int:
    reads = [0]
    real = model.CellView.record

    def counted(self):
        reads[0] += 1
        return real.fget(self)

    monkeypatch.setattr(model.CellView, "record", property(counted))
    rep = RunReport.from_run(_run(kernels), known=KnownIssues("none"))
    for fmt in ("markdown", "html", "junit", "json"):
        assert render(rep, fmt)
    monkeypatch.undo()
    return reads[0]


def test_reporting_reads_each_cell_a_bounded_number_of_times(monkeypatch):
    small, large = _record_reads(4, monkeypatch), _record_reads(16, monkeypatch)
    cells = 16 * len(PROFILES) * (len(SCENARIOS) + len(ENGINE_SCENARIOS) * len(ENGINES))
    # linear: four times the cells, about four times the reads (the quadratic fold read ~16x)
    assert large < 5 * small, (small, large)
    assert large < 200 * cells, (large, cells)
