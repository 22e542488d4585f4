"""The pipelines in jobs/ as data: each file's `python -m mnistops ...` steps, in the order they run,
with the pipeline's parameters and variables substituted the way Azure DevOps, GitHub Actions and
bash do it, so that tests can compose every step and the rehearsal can run them as an agent would.

Azure DevOps: `${{ parameters.x }}` (template expressions, at compile time), then `$(Name)` macros
from the pipeline's variables, then the step's process environment (every variable, its name upper-
cased with '.' as '_', plus the step's `env:`), which bash expands in `$NAME`. GitHub Actions:
`${{ inputs.x }}`, `${{ vars.X }}`, `${{ github.x }}`, ... then workflow, job and step `env:`, then
bash. A name that is neither defined in the file nor given by the caller is an error, so a typo in a
pipeline fails a test instead of expanding to nothing.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import yaml

REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "jobs"
COMMAND = re.compile(r"python -m mnistops(?P<args>[^\n#]*)")
TEMPLATE = re.compile(r"\$\{\{\s*(?P<expr>[^}]+?)\s*\}\}")
MACRO = re.compile(r"\$\((?P<name>[A-Za-z_][\w.]*)\)")
SHELL = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_]\w*)\}|(?P<plain>[A-Za-z_]\w*))")


class Undefined(KeyError):
    """A pipeline names a parameter or variable that is defined nowhere."""


@dataclass
class Step:
    pipeline: Path
    job: str
    name: str
    args: List[str]  # what follows `python -m mnistops`, after substitution and word splitting
    env: Dict[str, str]  # the step's process environment (variables and env:), substituted
    condition: Optional[str]  # Azure DevOps `condition:` / GitHub `if:`; None: run if all before succeeded
    raw: str  # the command line as written

    def value(self, key: str) -> Optional[str]:
        """The last `key=value` override of this step (Hydra: the last one wins)."""
        found = [a.split("=", 1)[1] for a in self.args if a.split("=", 1)[0] == key]
        return found[-1] if found else None


def agent_environment() -> Dict[str, str]:
    """What an agent's process starts from: this machine's environment without this session's
    MNISTOPS_*, AZURE* and MLFLOW_* settings (a pipeline sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MNISTOPS_", "AZURE", "MLFLOW_"))}


def pipelines(kind: str = "*") -> List[Path]:
    return sorted(JOBS.rglob(f"{kind}.yml"))


def flavour(path: Path) -> str:
    return "github" if "github-actions" in path.parts else "azure-devops"


def setup(path: Path) -> str:
    return "self-hosted" if "self-hosted" in path.parts else "azure"


def load(path: Path) -> dict:
    """The pipeline as its platform reads it: Azure DevOps reads every scalar as a string."""
    if flavour(path) == "azure-devops":
        return yaml.load(path.read_text(), Loader=yaml.BaseLoader)
    doc = yaml.safe_load(path.read_text())
    if True in doc:  # YAML 1.1 reads GitHub's `on:` key as the boolean true
        doc["on"] = doc.pop(True)
    return doc


def steps(path: Path, values: Optional[Dict[str, str]] = None,
          parameters: Optional[Dict[str, str]] = None) -> List[Step]:
    """Every mnistops command of `path`, in order. `values` gives what the platform or a variable group
    provides (e.g. `Pipeline.Workspace`, `github.workspace`, `vars.X`, `MNISTOPS_QA_TRACKING_URI`) and
    overrides variables the file defines (as a value set at queue time would); `parameters` gives
    runtime parameters (Azure DevOps) or workflow_dispatch inputs (GitHub)."""
    doc = load(path)
    values = dict(values or {})
    walk = _ado_steps if flavour(path) == "azure-devops" else _github_steps
    return list(walk(path, doc, values, dict(parameters or {})))


@dataclass
class Script:
    """A whole `script:` step of an Azure DevOps pipeline, macros substituted as the agent does before
    it hands the text to bash: for the steps that are not `python -m mnistops` (e.g. a REST call)."""

    pipeline: Path
    job: str
    name: str
    text: str
    env: Dict[str, str]
    condition: Optional[str]


def scripts(path: Path, values: Optional[Dict[str, str]] = None,
            parameters: Optional[Dict[str, str]] = None) -> List[Script]:
    """Every script step of the Azure DevOps pipeline `path`, in order, as `steps` substitutes them."""
    assert flavour(path) == "azure-devops", path
    return list(_ado_steps(path, load(path), dict(values or {}), dict(parameters or {}), whole_scripts=True))


# --------------------------------------------------------------------------------- Azure DevOps

def _ado_variables(block, into: Dict[str, str]) -> Dict[str, str]:
    out = dict(into)
    if isinstance(block, dict):
        out.update({k: str(v) for k, v in block.items()})
    for item in block or []:
        if isinstance(item, dict) and "name" in item:
            out[item["name"]] = str(item.get("value", ""))
    return out


def _ado_jobs(doc: dict) -> Iterator[Tuple[str, dict, Dict[str, str]]]:
    """(job name, job, variables of its stage) in file order."""
    if "stages" in doc:
        for stage in doc["stages"]:
            for job in stage.get("jobs", []):
                yield job.get("job") or job.get("deployment"), job, _ado_variables(stage.get("variables"), {})
    elif "jobs" in doc:
        for job in doc["jobs"]:
            yield job.get("job") or job.get("deployment"), job, {}
    else:
        yield "job", {"steps": doc.get("steps", [])}, {}


def _job_steps(job: dict) -> list:
    if "steps" in job:
        return job["steps"]
    strategy = job.get("strategy", {}).get("runOnce", {})
    return [s for phase in ("preDeploy", "deploy", "routeTraffic", "postRouteTraffic") for s in
            strategy.get(phase, {}).get("steps", [])]


def _ado_steps(path: Path, doc: dict, values: Dict[str, str], parameters: Dict[str, str],
               whole_scripts: bool = False) -> Iterator[Step]:
    params = {p["name"]: str(p.get("default", "")) for p in doc.get("parameters", [])}
    params.update(parameters)
    pipeline_vars = _ado_variables(doc.get("variables"), {})
    for job_name, job, stage_vars in _ado_jobs(doc):
        variables = {**pipeline_vars, **stage_vars, **_ado_variables(job.get("variables"), {}), **values}

        def macro(text: str, seen=(), strict: bool = True) -> str:
            def one(m):
                name = m["name"]
                if name not in variables:
                    if not strict:  # Azure DevOps leaves an undefined macro as it is
                        return m[0]
                    raise Undefined(f"{path.name}: $({name}) is not a variable of the pipeline")
                if name in seen:
                    raise Undefined(f"{path.name}: $({name}) refers to itself")
                return macro(variables[name], (*seen, name), strict)
            return MACRO.sub(one, text)

        def template(text: str) -> str:
            def one(m):
                expr = m["expr"]
                if expr.startswith("parameters."):
                    name = expr.split(".", 1)[1]
                    if name not in params:
                        raise Undefined(f"{path.name}: ${{{{ {expr} }}}} is not a parameter of the pipeline")
                    return params[name]
                raise Undefined(f"{path.name}: unsupported template expression ${{{{ {expr} }}}}")
            return TEMPLATE.sub(one, text)

        for number, step in enumerate(_job_steps(job)):
            script = step.get("script") or step.get("bash") or step.get("inputs", {}).get("inlineScript")
            if not script:
                continue
            process_env = {k.upper().replace(".", "_"): macro(v, strict=False) for k, v in variables.items()}
            process_env.update({k: macro(template(str(v)), strict=False) for k, v in (step.get("env") or {}).items()})
            name = step.get("displayName", f"step {number}")
            if whole_scripts:
                yield Script(path, job_name, name, macro(template(script)), process_env, step.get("condition"))
                continue
            for line in template(script).splitlines():
                match = COMMAND.search(line)
                if match:
                    args = _words(macro(match["args"]), process_env, path)
                    yield Step(path, job_name, name, args, process_env, step.get("condition"), line.strip())


# --------------------------------------------------------------------------------- GitHub Actions

def _github_steps(path: Path, doc: dict, values: Dict[str, str], parameters: Dict[str, str]) -> Iterator[Step]:
    triggers = doc.get("on") if isinstance(doc.get("on"), dict) else {}  # `on: push` is a plain string
    dispatch = triggers.get("workflow_dispatch") or {}
    inputs = {k: str(v.get("default", "")) for k, v in (dispatch.get("inputs") or {}).items()}
    inputs.update(parameters)

    def expression(text: str, env: Dict[str, str], strict: bool = True) -> str:
        def one(m):
            expr = m["expr"]
            if expr.startswith(("inputs.", "github.event.inputs.")):
                name = expr.rsplit(".", 1)[1]
                if name not in inputs:
                    raise Undefined(f"{path.name}: ${{{{ {expr} }}}} is not an input of the workflow")
                return inputs[name]
            if expr.startswith("env.") and expr[4:] in env:
                return env[expr[4:]]
            if expr in values:
                return values[expr]
            if not strict:  # an env value nothing here reads: left as written
                return m[0]
            raise Undefined(f"{path.name}: ${{{{ {expr} }}}} has no value here (pass it in `values`)")
        return TEMPLATE.sub(one, text)

    def env_block(block, base: Dict[str, str]) -> Dict[str, str]:
        out = dict(base)
        for k, v in (block or {}).items():
            out[k] = values[k] if k in values else expression(str(v), out, strict=False)
        return out

    workflow_env = env_block(doc.get("env"), {})
    for job_name, job in (doc.get("jobs") or {}).items():
        job_env = env_block(job.get("env"), workflow_env)
        for number, step in enumerate(job.get("steps", [])):
            script = step.get("run")
            if not script:
                continue
            process_env = env_block(step.get("env"), job_env)
            for line in script.splitlines():
                match = COMMAND.search(line)
                if match:
                    args = _words(expression(match["args"], process_env), process_env, path)
                    yield Step(path, job_name, step.get("name", f"step {number}"), args, process_env,
                               step.get("if"), line.strip())


# --------------------------------------------------------------------------------- bash

def _words(text: str, env: Dict[str, str], path: Path) -> List[str]:
    """bash's parameter expansion and word splitting of an unquoted command line."""
    def one(m):
        name = m["braced"] or m["plain"]
        if name not in env:
            raise Undefined(f"{path.name}: ${name} is not in the step's environment")
        return env[name]
    return shlex.split(SHELL.sub(one, text))


@dataclass
class Neutral:
    """Placeholder values for everything the platforms and variable groups provide, to compose steps."""

    values: Dict[str, str] = field(default_factory=lambda: {
        # Azure DevOps predefined variables and runtime-set variables
        "Pipeline.Workspace": "/agent/_work/1", "Build.ArtifactStagingDirectory": "/agent/_work/1/a",
        "Build.SourceVersion": "0" * 40, "RELEASE": "/var/lib/mnistops/releases/" + "0" * 40,
        "System.AccessToken": "token", "alertWebhookUrl": "https://hooks.example.com/x",
        # variable groups (Azure DevOps) and repository/environment variables (GitHub)
        **{f"{prefix}{env}{suffix}": f"value-of-{prefix}{env}{suffix}".lower()
           for env in ("QA", "PROD") for prefix, suffix in (
               ("AZURE_", "_SUBSCRIPTION_ID"), ("AZUREML_", "_RESOURCE_GROUP"), ("AZUREML_", "_WORKSPACE"),
               ("AZUREML_", "_ENDPOINT"))},
        "MNISTOPS_QA_TRACKING_URI": "http://mlflow-qa:5000", "MNISTOPS_PROD_TRACKING_URI": "http://mlflow-prod:5000",
        # GitHub contexts
        "github.workspace": "/runner/_work/mnistops/mnistops", "runner.temp": "/runner/_work/_temp",
        "github.token": "token", "secrets.MNISTOPS_ALERT_WEBHOOK": "https://hooks.example.com/x",
        **{f"vars.{name}": f"value-of-{name}".lower() for name in (
            "AZURE_QA_SUBSCRIPTION_ID", "AZUREML_QA_RESOURCE_GROUP", "AZUREML_QA_WORKSPACE", "AZUREML_QA_ENDPOINT",
            "AZURE_PROD_SUBSCRIPTION_ID", "AZUREML_PROD_RESOURCE_GROUP", "AZUREML_PROD_WORKSPACE",
            "AZUREML_PROD_ENDPOINT", "MNISTOPS_QA_TRACKING_URI", "MNISTOPS_PROD_TRACKING_URI")},
    })
