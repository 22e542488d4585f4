"""notebooks/quickstart.ipynb, executed top to bottom on small real data in a kernel of this
interpreter, failing on any cell error; and the committed notebooks carry no outputs."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import QUICK, REPO, free_port, fresh_home

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
QUICKSTART = REPO / "notebooks" / "quickstart.ipynb"
KERNEL = "mnistops-test"
# small-data settings: the QUICK recipe (logreg, 60 batches: ~0.85 test accuracy), bars to match
# the smoke test's latency limit explicit too: its 250 ms p95 default is a production bar, not what a busy CI checks
SMALL_BARS = ["gate.min_accuracy=0.8", "smoke.min_accuracy=0.8", "smoke.samples=100", "smoke.max_p95_ms=10000"]
SMALL_TRAFFIC = ["traffic.requests=150", "traffic.rate=0"]
SMALL_MONITOR = ["monitor.window=1h", "monitor.reference_size=2000"]


def injected_parameters(home: Path, ports: Dict[str, int]) -> str:
    """The cell papermill would inject after the notebook's `parameters` cell."""
    return "\n".join([
        "# injected by tests/test_notebook.py",
        "import sys",
        f"assert sys.prefix == {sys.prefix!r}, sys.prefix  # the kernel runs this interpreter",
        f"FAST = {QUICK!r}",
        f"HOME = {str(home)!r}",
        f"PORTS = {ports!r}",
        f"BARS = {SMALL_BARS!r}",
        f"TRAFFIC = {SMALL_TRAFFIC!r}",
        f"MONITOR = {SMALL_MONITOR!r}",
    ])


def kernel_dir(root: Path) -> Path:
    """A kernelspec that starts this interpreter (not whatever `python3` a user's Jupyter finds)."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mnistops tests", "language": "python"}))
    return root


def prepare(path: Path, parameters: str):
    """The notebook with `parameters` injected after its `parameters` cell, as papermill does."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(parameters))
    return nb


def execute(nb, cwd: Path, jupyter_path: Path, timeout: int = 300) -> None:
    """Run every cell in order, in place; the first failing cell raises CellExecutionError. The kernel
    sees no Azure workspace settings, so the Azure section previews and never submits."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    specs = KernelSpecManager(kernel_dirs=[str(jupyter_path / "kernels")])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "AZUREML_"))}

    class Kernel(AsyncKernelManager):  # the client starts and shuts down its own kernel (one of ours)
        def __init__(self, **kwargs):
            super().__init__(kernel_spec_manager=specs, **kwargs)

    NotebookClient(nb, kernel_name=KERNEL, kernel_manager_class=Kernel, timeout=timeout, allow_errors=False,
                   resources={"metadata": {"path": str(cwd)}}).execute(env=env)


def stop_endpoints(home: Path, ports: Dict[str, int]) -> None:
    import mnistops

    for env, port in ports.items():
        mnistops.run("endpoint", [f"env={env}", f"paths.home={home}", f"endpoint.port={port}", "endpoint.action=stop"])


def outputs_of(nb, text: str) -> List[dict]:
    """The outputs of the code cells whose source contains `text`."""
    return [o for c in nb.cells if c.cell_type == "code" and text in c.source for o in c.outputs]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_carry_no_outputs(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs or execution counts; clear them before committing"
    assert "widgets" not in nb.metadata, f"{path.name}: widget state committed"


def test_quickstart_has_a_parameters_cell():
    import nbformat

    nb = nbformat.read(QUICKSTART, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and all(f"{name} =" in tagged[0].source for name in ("FAST", "HOME", "PORTS"))


@pytest.mark.integration
@pytest.mark.ci_training  # the quickstart's CI cell (no tests step)
def test_quickstart_runs_top_to_bottom(tmp_path_factory, data_cache, tmp_path):
    home = fresh_home(tmp_path_factory, data_cache, "notebook-home")
    ports = {env: free_port() for env in ("dev", "qa", "prod")}
    started = time.monotonic()
    try:
        nb = prepare(QUICKSTART, injected_parameters(home, ports))
        execute(nb, QUICKSTART.parent, kernel_dir(tmp_path))
    finally:
        stop_endpoints(home, ports)
    print(f"quickstart.ipynb ran in {time.monotonic() - started:.0f} s")

    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 5, "sample grid, histogram, confusion matrix, misclassified, predictions"
    assert any("scoring URL: http://127.0.0.1:" in o.get("text", "") for o in outputs_of(nb, "scoring_url ="))
    assert any("text/html" in o.get("data", {}) for o in outputs_of(nb, "monitoring.artifacts"))
    azure = "".join(o.get("text", "") for o in outputs_of(nb, "show_specs(mnistops.run("))
    assert "no workspace set: dry run" in "".join(o.get("text", "") for o in outputs_of(nb, "DRY_RUN ="))
    for kind in ("environment", "data", "commandJob", "managedOnlineEndpoint", "managedOnlineDeployment", "schedule"):
        assert f"{kind}.schema.json" in azure, f"the Azure section shows the {kind} spec"
    stopped = "".join(o.get("text", "") for o in outputs_of(nb, '"endpoint.action=stop"'))
    for env in ("dev", "qa", "prod"):
        assert (home / env / "mlflow.db").is_file()
        assert f"endpoint mnist ({env}): stopped" in stopped, f"the notebook's last section stops {env}'s endpoint"
