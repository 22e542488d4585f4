"""A rehearsal of the whole multi-env process, as the self-hosted pipelines run it (issue 12).

Two real `mlflow server`s (QA and PROD: SQL backend, --serve-artifacts) on 127.0.0.1 are the envs'
stores. CI's `checkout: self` is a git clone of this repository's HEAD with nothing beside it (no
../shared/), and its steps run there with CI=true, as on a GitHub or Azure DevOps agent: the first CI
runs the tests step with the default `ci.pytest_args` (the whole unit tier, from the clone). The steps come from the pipeline files themselves (jobs/self-hosted/azure-devops/*.yml; the
GitHub workflows run the same commands, see test_jobs.py), with their variables substituted, each in a
fresh working directory like a fresh agent: a job's scratch MNISTOPS_HOME starts empty (only the
verified raw-data cache is copied in, to save the download), and on the two agent hosts that serve the
endpoints only what the endpoints keep survives between steps (their state and what they collected).
So everything one pipeline hands to the next goes through the env's tracking server.

The chain: CI in QA -> CD to QA with a smoke test that fails (the chain stops; promotion refuses) ->
CD to QA -> promotion and CD to PROD (the approval is given) -> traffic against PROD with shifted
images and feedback (a test driver) -> monitoring in PROD alerts and hands the labelled data to QA ->
the CI it queues runs in QA, trains on that data and its gate approves the better model: QA's new
champion, PROD unchanged until CD (a gate that refuses a retrained model: tests/test_monitoring.py). Small training slices come in through the pipelines' MNISTOPS_ARGS variable.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import pytest

import pipeline_files as pf
from conftest import QUICK, REPO, compose, free_port, mirror_url
from mnistops import tags



pytestmark = pytest.mark.integration

PIPELINES = REPO / "jobs" / "self-hosted" / "azure-devops"
MODEL = "mnist-classifier"
FAST_TESTS = "ci.pytest_args=[tests/test_config.py::test_default_main_job_is_the_dev_pipeline,-q,-p,no:cacheprovider]"
# logreg on 60 batches reaches ~0.85-0.9: a first champion and a smoke test need bars it can meet
# smoke's latency limit explicit (its 250 ms default is a production bar, not what the chain checks on a busy CI)
CHAIN_ARGS = [*QUICK, "gate.min_accuracy=0.8", "monitor.reference_size=1000", "smoke.max_p95_ms=10000"]
CI_ARGS = [*CHAIN_ARGS, FAST_TESTS]  # after the first CI, whose tests step runs the default unit tier
STEP_TIMEOUT = 600
AGENT_STEP_TIMEOUT = 2400  # CI's step on a clone runs the whole unit tier inside


# ----------------------------------------------------------------------------- the stores

class TrackingServer:
    """`mlflow server` with a sqlite backend and served artifacts, as an env's store."""

    def __init__(self, root: Path, name: str):
        self.root = root / f"mlflow-{name}"
        self.root.mkdir(parents=True)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = (self.root / "server.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--serve-artifacts", "--artifacts-destination", str(self.root / "artifacts")],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})

    def wait(self, timeout: float = 240.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"mlflow server {self.uri} exited:\n{(self.root / 'server.log').read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.uri}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AssertionError(f"mlflow server {self.uri} not up after {timeout} s")

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.log.close()


# ----------------------------------------------------------------------------- the agents

@dataclass
class StepRun:
    step: pf.Step
    returncode: Optional[int]  # None: skipped (an earlier step failed)
    stdout: str = ""
    stderr: str = ""
    cwd: Optional[Path] = None  # where it ran (CI's: the clone)

    def tail(self) -> str:
        return f"$ mnistops {' '.join(self.step.args)}\n(exit {self.returncode})\n{self.stdout[-2000:]}\n{self.stderr[-4000:]}"


@dataclass
class PipelineRun:
    pipeline: str
    steps: List[StepRun] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.returncode == 0 for s in self.steps if s.returncode is not None)

    def of(self, stage: str) -> StepRun:
        return next(s for s in self.steps if s.step.value("stage") == stage)

    def report(self) -> str:
        return f"pipeline {self.pipeline}:\n" + "\n".join(s.tail() for s in self.steps if s.returncode)


class Agents:
    """Runs a pipeline file's mnistops steps as an Azure DevOps agent would, in order, each in a fresh
    working directory, stopping at the first failure (steps with `condition: always()` still run)."""

    def __init__(self, root: Path, data_cache: Path, qa: TrackingServer, prod: TrackingServer):
        self.root, self.data_cache, self.runs = root, data_cache, 0
        self.hosts = {"qa": root / "hosts" / "qa", "prod": root / "hosts" / "prod"}  # MNISTOPS_HOST_HOME
        self.ports = {"qa": free_port(), "prod": free_port()}
        self.stores = {"MNISTOPS_QA_TRACKING_URI": qa.uri, "MNISTOPS_PROD_TRACKING_URI": prod.uri}

    def values(self, env: str, workspace: Path, args: List[str]) -> Dict[str, str]:
        return {"Pipeline.Workspace": str(workspace), "Build.ArtifactStagingDirectory": str(workspace / "a"),
                "Build.SourceVersion": "rehearsal", "RELEASE": str(REPO), "System.AccessToken": "unused",
                "alertWebhookUrl": "", "MNISTOPS_HOST_HOME": str(self.hosts[env]),
                "MNISTOPS_ARGS": " ".join([*args, f"endpoint.port={self.ports[env]}"]), **self.stores}

    def prepare_home(self, home: Path) -> None:
        """A scratch home is new and empty; a host's home keeps only what its endpoints keep."""
        if any(home == h / "home" for h in self.hosts.values()) and home.is_dir():
            for env_dir in [p for p in home.iterdir() if p.is_dir() and p.name != "data"]:
                for item in env_dir.iterdir():
                    if item.name not in ("endpoints", "monitoring"):
                        shutil.rmtree(item) if item.is_dir() else item.unlink()
        if not (home / "data").is_dir():
            shutil.copytree(self.data_cache, home / "data")

    def run(self, name: str, env: str, args: List[str], parameters: Optional[Dict[str, str]] = None) -> PipelineRun:
        self.runs += 1
        workspace = self.root / "runs" / f"{self.runs:02d}-{name}"
        (workspace / "a").mkdir(parents=True)
        checkout = self.checkout(workspace) if name == "ci" else None
        result = PipelineRun(name)
        failed = False
        for number, step in enumerate(pf.steps(PIPELINES / f"{name}.yml", self.values(env, workspace, args), parameters)):
            if failed and step.condition != "always()":
                result.steps.append(StepRun(step, None))
                continue
            cwd = checkout or workspace / f"step-{number}"
            cwd.mkdir(exist_ok=True)
            home = Path(step.env["MNISTOPS_HOME"])
            self.prepare_home(home)
            result.steps.append(self.execute(step, step.args, step.env, cwd, agent=checkout is not None))
            failed = failed or result.steps[-1].returncode != 0
        return result

    @staticmethod
    def checkout(workspace: Path) -> Path:
        """CI's `checkout: self`: a clone of the committed HEAD at $(Build.SourcesDirectory), nothing beside
        it (no ../shared/); `python -m mnistops` run there imports the clone's code (cwd comes first)."""
        clone = workspace / "s"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=300,
                       capture_output=True)
        assert not (workspace / "shared").exists()
        return clone

    def execute(self, step: pf.Step, args: List[str], env: Dict[str, str], cwd: Path, agent: bool = False) -> StepRun:
        base = pf.agent_environment()
        if agent:  # a hosted agent: CI=true (GitHub's value), none of this session's Python settings;
            # bytecode is written, so the clone's __pycache__ shows whose code ran
            base = {k: v for k, v in base.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
            base.update(CI="true", TMPDIR=str(cwd.parent / "tmp"))  # the inner pytest's tmp dirs stay apart
            (cwd.parent / "tmp").mkdir(exist_ok=True)
        full_env = {**base, "MNISTOPS_DATA_MIRROR": mirror_url(), "PYTHONUNBUFFERED": "1", **env}
        proc = subprocess.run([sys.executable, "-m", "mnistops", *args], cwd=cwd, env=full_env,
                              capture_output=True, text=True, timeout=AGENT_STEP_TIMEOUT if agent else STEP_TIMEOUT)
        return StepRun(step, proc.returncode, proc.stdout, proc.stderr, cwd)

    def driver(self, env: str, args: List[str]) -> StepRun:
        """A command the test runs on an env's host (traffic), not a pipeline step."""
        home = self.hosts[env] / "home"
        self.prepare_home(home)
        step = pf.Step(Path("driver"), "driver", "driver", [f"env={env}", *args], {}, None, "")
        cwd = self.root / "runs" / f"driver-{time.monotonic_ns()}"
        cwd.mkdir(parents=True)
        return self.execute(step, step.args + [f"endpoint.port={self.ports[env]}"],
                            {"MNISTOPS_HOME": str(home), **self.stores}, cwd)

    def served_versions(self, env: str) -> List[str]:
        """What the env's endpoint answers it serves (Open Inference Protocol model metadata)."""
        import httpx

        keys = sorted((self.hosts[env] / "home" / env / "endpoints").glob("*/primary.key"))
        assert keys, f"no endpoint state on the {env} host"
        answer = httpx.get(f"http://127.0.0.1:{self.ports[env]}/v2/models/{MODEL}", timeout=30,
                           headers={"Authorization": f"Bearer {keys[0].read_text().strip()}"})
        assert answer.status_code == 200, answer.text
        return answer.json()["versions"]

    def stop_endpoints(self) -> None:
        """`stage=endpoint endpoint.action=stop` on both hosts at once."""
        base = pf.agent_environment()
        stopping = []
        for env, host in self.hosts.items():
            if (host / "home" / env / "endpoints").is_dir():
                cwd = self.root / "runs" / f"teardown-{env}"
                cwd.mkdir(parents=True, exist_ok=True)
                stopping.append(subprocess.Popen(
                    [sys.executable, "-m", "mnistops", f"env={env}", "stage=endpoint", "endpoint.action=stop",
                     f"endpoint.port={self.ports[env]}"], cwd=cwd, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, env={**base, "MNISTOPS_HOME": str(host / "home"), **self.stores}))
        for proc in stopping:
            proc.wait(STEP_TIMEOUT)


# ----------------------------------------------------------------------------- the rehearsal

@pytest.fixture
def process(tmp_path, data_cache):
    qa, prod = TrackingServer(tmp_path, "qa"), TrackingServer(tmp_path, "prod")
    agents = Agents(tmp_path, data_cache, qa, prod)
    try:
        qa.wait()
        prod.wait()
        yield agents, qa, prod
    finally:
        agents.stop_endpoints()
        qa.terminate()  # both at once
        prod.terminate()
        qa.stop()
        prod.stop()


def champion(server: TrackingServer):
    from mlflow.exceptions import MlflowException

    try:
        return server.client().get_model_version_by_alias(MODEL, "champion")
    except MlflowException:
        return None


def versions(server: TrackingServer) -> list:
    return server.client().search_model_versions(f"name = '{MODEL}'")


def runs_with(server: TrackingServer, stage: str) -> list:
    client = server.client()
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"tags.`{tags.STAGE}` = '{stage}'") if experiments else []


@pytest.mark.ci_training(runs=2)  # CI in QA, and the retraining CI that monitoring queues
def test_the_pipelines_connect_through_each_envs_store(process):
    agents, qa, prod = process

    # 1. CI in QA, on a fresh agent's clone with the default ci.pytest_args (the unit tier, from the clone):
    # trains, registers, baselines and gates into QA's server
    ci = agents.run("ci", "qa", CHAIN_ARGS)
    assert ci.ok, ci.report()
    out = ci.of("ci").stdout
    assert f"ci: running pytest {' '.join(compose([]).ci.pytest_args)}" in out, out[-3000:]
    summary = re.search(r"^(\d+) passed(.*) in [\d.]+s", out, re.M)
    assert summary and int(summary.group(1)) >= 100, out[-4000:]
    assert "failed" not in summary.group(2) and "error" not in summary.group(2), summary.group(0)
    clone = ci.of("ci").cwd  # the clone's own code and tests ran (not this checkout's): compiled there
    assert list((clone / "mnistops" / "stages" / "__pycache__").glob("tests.*.pyc"))
    assert list((clone / "tests" / "__pycache__").glob("test_pipeline_tools*.pyc"))
    approved = champion(qa)
    assert approved is not None, "CI passed but QA's tracking server has no @champion: " + ci.of("ci").stdout[-1500:]
    assert approved.tags[tags.GATE_DECISION] == tags.APPROVED
    # (moved from test_cicd.py) the steps ran under one ci run, and the first CI finds
    # no baseline suite yet; the baselines it leaves are in QA's server, not on the agent (scratch home)
    assert "no baseline suite in env 'qa' yet" in out, out[-3000:]
    assert f"gate approved models:/{MODEL}/{approved.version}" in out
    assert "model-quality baseline: no " in out, out[-3000:]
    (parent,) = runs_with(qa, "ci")
    assert parent.info.status == "FINISHED" and parent.data.metrics["ci/tests_passed"] == 1.0
    for stage in ("data", "train", "baseline", "gate"):
        (child,) = runs_with(qa, stage)
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id, stage
    names = {a.path for a in qa.client().list_artifacts(runs_with(qa, "baseline")[0].info.run_id, "quality")}
    assert {"quality/data_docs", "quality/suite.json"} <= names, names
    scratch = Path(ci.of("ci").step.env["MNISTOPS_HOME"])
    assert not (scratch / "qa" / "quality").exists() and not (scratch / "dev").exists(), "env=qa wrote elsewhere"

    # 2. CD to QA whose smoke test fails: rolled back, tagged failed; the chain stops and promotion refuses
    cd_bad = agents.run("cd-qa", "qa", [*CI_ARGS, "smoke.min_accuracy=0.999"])
    assert not cd_bad.ok and cd_bad.of("cd").returncode != 0, cd_bad.report()
    assert qa.client().get_model_version(MODEL, approved.version).tags.get(tags.smoke("qa")) == "failed"
    forced = agents.run("cd-prod", "prod", CI_ARGS)  # as if someone approved it anyway
    assert forced.of("promote").returncode != 0 and forced.of("cd").returncode is None, forced.report()
    assert "has not passed a smoke test in qa" in forced.of("promote").stderr, forced.report()
    assert not versions(prod), "a version QA's smoke test failed reached PROD"

    # 3. CD to QA: deployed and smoke-tested in QA
    cd_qa = agents.run("cd-qa", "qa", [*CI_ARGS, "smoke.min_accuracy=0.7"])
    assert cd_qa.ok, cd_qa.report()
    assert qa.client().get_model_version(MODEL, approved.version).tags[tags.smoke("qa")] == "passed"

    # 4. promotion and CD to PROD (the ManualValidation stage: approved)
    cd_prod = agents.run("cd-prod", "prod", [*CI_ARGS, "smoke.min_accuracy=0.7"])
    assert cd_prod.ok, cd_prod.report()
    promoted = champion(prod)
    assert promoted is not None
    assert promoted.tags[tags.SOURCE_ENV] == "qa" and promoted.tags[tags.SOURCE_VERSION] == str(approved.version)
    assert promoted.tags[tags.WEIGHTS_SHA256] == approved.tags[tags.WEIGHTS_SHA256]
    assert promoted.tags[tags.GATE_DECISION] == tags.APPROVED and promoted.tags[tags.smoke("qa")] == "passed"
    assert agents.served_versions("prod") == [str(promoted.version)], "PROD serves another version than QA approved"
    # (moved from test_cicd.py) the lineage travels with it, PROD serves the very weights QA approved,
    # and promoting again copies nothing
    for tag in (tags.DATASET_DIGEST, tags.RUN_ID):
        assert promoted.tags[tag] == approved.tags[tag], tag
    (served,) = (agents.hosts["prod"] / "home" / "prod" / "endpoints").glob(
        f"*/models/{MODEL}-v{promoted.version}/artifacts/model.onnx")
    assert hashlib.sha256(served.read_bytes()).hexdigest() == approved.tags[tags.WEIGHTS_SHA256]
    again = agents.driver("prod", ["stage=promote"])
    assert again.returncode == 0 and "no change" in again.stdout, again.tail()
    assert [v.version for v in versions(prod)] == [promoted.version]

    # 5. production traffic, rotated, with feedback (a test driver, not a pipeline)
    traffic = agents.driver("prod", ["stage=traffic", "traffic.shift=rotate", "traffic.severity=1.0",
                                     "traffic.requests=200", "traffic.rate=0", "traffic.feedback_fraction=0.5"])
    assert traffic.returncode == 0, traffic.tail()

    # 6. monitoring in PROD: alerts, hands the labelled data to QA, asks for QA's CI
    monitor = agents.run("monitor", "prod", CI_ARGS)
    assert monitor.ok, monitor.report()
    assert "ALERT" in monitor.of("monitor").stdout, monitor.of("monitor").tail()
    request_file = Path(monitor.of("monitor").step.value("monitor.retrain.request_file"))
    assert request_file.is_file(), "the monitor handed nothing over: " + monitor.of("monitor").stdout[-1500:]
    request = json.loads(request_file.read_text())
    assert request["ci_overrides"], request
    assert not runs_with(prod, "ci") and not runs_with(prod, "train"), "PROD trained a model"

    # 7. the CI that monitoring queues runs in QA, trains on the handed-over data and its gate approves the
    # better model (a CNN against the logreg champion: every class's recall rises); PROD waits for CD
    before = {v.version for v in versions(qa)}
    retrain = agents.run("ci", "qa", [*CI_ARGS, "model=cnn_small"],
                         parameters={"ciArgs": " ".join(request["ci_overrides"])})
    assert retrain.ok, retrain.report()
    new = [v for v in versions(qa) if v.version not in before]
    assert len(new) == 1 and new[0].tags[tags.GATE_DECISION] == tags.APPROVED, "retraining did not happen in QA"
    assert champion(qa).version == new[0].version
    trained_on = qa.client().get_run(new[0].run_id).data.params.get("data.extra_train", "")
    assert "production-feedback" in trained_on or "kept.npz" in trained_on, trained_on  # (as handed over, or
    # the rows the label check kept)
    overrides = " ".join(r.data.tags.get(tags.OVERRIDES, "") for r in runs_with(qa, "ci"))
    assert request["ci_overrides"][0] in overrides, "QA's CI did not run with the handed-over data"
    # (moved from test_cicd.py) this agent's scratch home is new: the suite and the champion's
    # model-quality baseline that its validate and baseline steps use come from QA's server
    out = retrain.of("ci").stdout
    assert "PASSED: " in out and " against suite " in out, out[-3000:]
    assert f"model-quality baseline: models:/{MODEL}/{approved.version}" in out, out[-3000:]
    assert f"gate approved models:/{MODEL}/{new[0].version}" in out, out[-3000:]
    assert [v.version for v in versions(prod)] == [promoted.version], "something reached PROD without QA"
    assert agents.served_versions("prod") == [str(promoted.version)]
