"""The stage table is the one list of stages: each has a module with run(cfg), composes as
`stage=<name>`, and appears in `--help`; composites name only real steps."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from conftest import REPO, compose
from mnistops.stage_table import STAGES


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_has_a_body_and_composes(name, tmp_path):
    stage = STAGES[name]
    for step in stage.steps or (name,):
        assert callable(importlib.import_module(f"mnistops.stages.{step}").run), step
        assert not STAGES[step].steps, f"{name}: step {step} is itself a composite"
    cfg = compose([f"stage={name}"], tmp_path)
    assert cfg.stage.name == name and list(cfg.stage.steps) == list(stage.steps)


@pytest.mark.integration
def test_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "mnistops", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120).stdout
    listed = {line.split()[0] for line in out.split("Stages (stage=NAME):", 1)[1].splitlines()[1:] if line.startswith("  ")}
    assert listed == set(STAGES)


def test_no_stage_module_reads_the_backend_name():
    for path in (REPO / "mnistops" / "stages").glob("*.py"):
        assert "env.backend" not in path.read_text(), f"{path.name} asks which backend it is on"
