"""After a guest crash the runner reruns the rest of a profile (lab/runner.py ``agent_batches``):
as one agent call where the agent's --scenario x --engine product is exactly the cells left,
else one call per engine — never a cell twice, never one left out."""
from __future__ import annotations

from overlaylab.lab.runner import agent_batches

NEUTRAL = {"image-whiteouts", "container-changes"}


def test_the_rest_of_a_port_only_profile_is_one_agent_call():
    left = [("create-empty", "port"), ("driver-init", "port")]
    assert agent_batches(left, NEUTRAL) == [left]


def test_classic_cells_and_engine_cells_on_every_engine_stay_one_call():
    left = [("driver-init", "port"), ("image-whiteouts", "port"), ("image-whiteouts", "docker-overlay2")]
    assert agent_batches(left, NEUTRAL) == [left]


def test_a_crash_inside_one_engines_cells_splits_the_rest_per_engine():
    # image-whiteouts already ran on the port: one call for both engines would run it again
    left = [("container-changes", "port"), ("image-whiteouts", "docker-overlay2"),
            ("container-changes", "docker-overlay2")]
    batches = agent_batches(left, NEUTRAL)
    assert batches == [[("container-changes", "port")],
                       [("image-whiteouts", "docker-overlay2"), ("container-changes", "docker-overlay2")]]
    assert sorted(r for b in batches for r in b) == sorted(left)


def test_nothing_left_is_no_agent_call():
    assert agent_batches([], NEUTRAL) == []
