"""The azure flavour's endpoint: a managed online endpoint (key auth) whose deployments are the
slots (`blue`, `green`). The deploy stage decides what goes where (stages/deploy.py holds the
blue/green logic); this class only does what it is asked, through azure-ai-ml:

  load(slot, version)   the deployment in that slot, created or updated, until Azure's readiness
                        probe passes (minutes); the traffic does not move
  set_traffic(...)      traffic + mirror traffic in one endpoint update; the split before is kept in
                        the endpoint's tag mnistops.previous_traffic for rollback
  rollback()            the split in that tag, the current one becoming the tag
After every traffic change the monitoring schedule follows the live deployment.

With azure.dry_run=true nothing is read or sent: the state is "no endpoint yet", `load` prepares
the inference environment and the deployment, `set_traffic` writes them as YAML with the endpoint
and its traffic, and `target` is None (the deploy stage's pinned request is skipped).
"""

from __future__ import annotations

import json
import re
from typing import Dict, List, Mapping, Optional

from omegaconf import DictConfig

from mnistops import tags as T
from mnistops.backends.base import Endpoint, EndpointState, ModelVersion, MonitoringSchedule, ScoringTarget
from mnistops.errors import MnistopsError

KEYS = ("primary", "secondary")


def text(value) -> str:
    """An SDK enum (EndpointProvisioningState.SUCCEEDED) as Azure spells it (Succeeded)."""
    return str(getattr(value, "value", value))


def model_uri_of(deployment) -> str:
    """models:/name/N a deployment serves: its tag, else its model's asset id."""
    uri = (deployment.tags or {}).get(T.MODEL_URI)
    if uri:
        return uri
    parts = str(deployment.model or "").rstrip("/").split("/")
    if "models" in parts and "versions" in parts:  # /subscriptions/.../models/<name>/versions/<n>
        return f"models:/{parts[parts.index('models') + 1]}/{parts[parts.index('versions') + 1]}"
    return str(deployment.model or "")


LOG_LINES = 200  # of a failed deployment's container log, searched for the error that stopped it
_RAISED = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Exit)\b:? .*")  # `ModuleNotFoundError: No module named 'x'`


def container_says(log: Optional[str], command: str) -> str:
    """What a failed deployment's container log adds to its error: the root cause of the last
    exception it printed (a chained traceback's first exception: score.py's ImportError, not the
    server's UserScriptException around it), else the log's last lines; and where the rest is."""
    lines = [line.rstrip() for line in (log or "").splitlines() if line.strip()]
    if not lines:
        return ""
    root, chained = None, False
    for line in (raw.strip() for raw in lines):
        if line.startswith(("The above exception was the direct cause", "During handling of the above exception")):
            chained = True
        elif _RAISED.match(line):
            if root is None or not chained:
                root = line
            chained = False
    shown = f"the container says: {root}" if root else "the container's last lines:\n" + "\n".join(lines[-20:])
    return f"\n  {shown}\n  (its log: {command})"


class ManagedEndpoint(Endpoint):
    def __init__(self, cfg: DictConfig, connection, name: str, monitoring: MonitoringSchedule):
        self.cfg, self.connection, self.name, self.monitoring = cfg, connection, name, monitoring
        self.env = cfg.env.name
        self.dry_run = bool(cfg.azure.dry_run)
        self._preview: list = []  # a dry run's entities, written together
        if cfg.endpoint.kind != "azure_managed":
            raise MnistopsError(f"endpoint.kind={cfg.endpoint.kind!r}: env.backend=azure serves on a managed online "
                                "endpoint (endpoint.kind=azure_managed, its default: drop the endpoint.kind override)")

    @property
    def ml(self):
        return self.connection.ml

    def _get(self):
        """The endpoint entity, or None when there is none."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.ml.online_endpoints.get(self.name)
        except ResourceNotFoundError:
            return None

    # ------------------------------------------------------------------ state
    def state(self) -> EndpointState:
        if self.dry_run:
            return EndpointState(exists=False)
        ep = self._get()
        if ep is None:
            return EndpointState(exists=False)
        previous = json.loads((ep.tags or {}).get(T.PREVIOUS_TRAFFIC) or "{}")
        return EndpointState(
            exists=True,
            deployments={d.name: model_uri_of(d) for d in self.ml.online_deployments.list(self.name)},
            # the SDK lists every deployment in the split, idle ones at 0: the state names only real shares
            traffic={k: int(v) for k, v in (ep.traffic or {}).items() if int(v) > 0},
            mirror={k: int(v) for k, v in (ep.mirror_traffic or {}).items() if int(v) > 0},
            can_roll_back=any(int(p) > 0 for p in (previous.get("traffic") or {}).values()))

    def ensure(self) -> bool:
        from mnistops.backends.azure import online_specs

        if self.dry_run or self._get() is not None:
            return False
        print(f"creating endpoint {self.name} ({self.env}, key auth)")
        self.ml.online_endpoints.begin_create_or_update(online_specs.endpoint(self.cfg, self.name)).result()
        return True

    # ------------------------------------------------------------------ changes
    def load(self, slot: str, version: ModelVersion) -> None:
        from mnistops.backends.azure import code_snapshot, environments, naming, online_specs

        env = environments.inference_environment(self.cfg)
        ground_truth = naming.ground_truth_asset(self.cfg, self.name)
        if self.dry_run:  # written with the endpoint by set_traffic: one preview, one folder
            self._preview = [env, online_specs.deployment(self.cfg, self.name, slot, version.name, version.version,
                                                          environments.reference(env), str(code_snapshot.root()),
                                                          ground_truth)]
            return
        ml = self.ml
        ml.environments.create_or_update(env)  # versioned by its conda file's digest: idempotent
        spec = online_specs.deployment(self.cfg, self.name, slot, version.name, version.version,
                                       environments.reference(env), code_snapshot.ensure(ml, self.cfg), ground_truth)
        ep = self.cfg.endpoint
        print(f"deploying {version.uri} to {slot} on {self.name} (minutes: image, {ep.instance_count} x "
              f"{ep.instance_type}, readiness probe)")
        try:
            ml.online_deployments.begin_create_or_update(spec).result()
        except Exception as err:  # noqa: BLE001 (the SDK's deployment errors carry the container log hint)
            from mnistops.backends.azure.workspace import error_line

            raise MnistopsError(f"deployment {slot} of {version.uri} on {self.name} failed: {error_line(err)}; "
                                f"traffic unchanged{self._logs(slot)}") from None

    def _logs(self, slot: str) -> str:
        try:
            tail = self.ml.online_deployments.get_logs(name=slot, endpoint_name=self.name, lines=LOG_LINES)
        except Exception:  # noqa: BLE001 (the logs are a hint; their absence must not hide the error)
            return ""
        return container_says(tail, f"az ml online-deployment get-logs -n {slot} -e {self.name} --lines {LOG_LINES}")

    def _move(self, traffic: Mapping[str, int], mirror: Mapping[str, int], previous: Dict) -> EndpointState:
        """One endpoint update: the entity as it is (Terraform's settings kept), new split, rollback tag."""
        ep = self._get()
        if ep is None:
            raise MnistopsError(f"endpoint {self.name} ({self.env}) is not there: run stage=deploy first")
        ep.traffic = {k: int(v) for k, v in traffic.items()}
        ep.mirror_traffic = {k: int(v) for k, v in mirror.items()}
        ep.tags = {**(ep.tags or {}), T.PREVIOUS_TRAFFIC: json.dumps(previous, sort_keys=True)}
        self.ml.online_endpoints.begin_create_or_update(ep).result()
        state = self.state()
        self.monitoring.follow(state)
        return state

    def set_traffic(self, traffic: Mapping[str, int], mirror: Mapping[str, int]) -> EndpointState:
        from mnistops.backends.azure import online_specs, render

        if self.dry_run:
            ep = online_specs.endpoint(self.cfg, self.name)
            ep.traffic, ep.mirror_traffic = dict(traffic), dict(mirror) or None
            paths = render.emit(self.cfg, [*self._preview, ep])
            return EndpointState(exists=False, traffic=dict(traffic), mirror=dict(mirror),
                                 previews=[str(p) for p in paths])
        now = self.state()
        return self._move(traffic, mirror, {"traffic": now.traffic, "mirror_traffic": now.mirror})

    def unload(self, slot: str) -> EndpointState:
        """Delete deployment `slot` (a rejected canary); Azure refuses while it takes traffic."""
        if self.dry_run:
            return EndpointState(exists=False)
        try:
            self.ml.online_deployments.begin_delete(name=slot, endpoint_name=self.name).result()
        except Exception as err:  # noqa: BLE001 (the SDK's own error types; one line for the user)
            from mnistops.backends.azure.workspace import error_line

            raise MnistopsError(f"deleting deployment {slot} of {self.name} failed: {error_line(err)}") from None
        return self.state()

    def rollback(self) -> EndpointState:
        if self.dry_run:
            raise MnistopsError("stage=rollback reads the endpoint's previous traffic from Azure: it has no dry run")
        ep = self._get()
        previous = json.loads(((ep.tags or {}) if ep is not None else {}).get(T.PREVIOUS_TRAFFIC) or "{}")
        if not any(int(p) > 0 for p in (previous.get("traffic") or {}).values()):
            raise MnistopsError(f"endpoint {self.name} ({self.env}) has no previous traffic: nothing to roll back to")
        now = self.state()
        return self._move(previous["traffic"], previous.get("mirror_traffic") or {},
                          {"traffic": now.traffic, "mirror_traffic": now.mirror})

    # ------------------------------------------------------------------ calling it
    def target(self) -> Optional[ScoringTarget]:
        if self.dry_run:
            return None
        ep = self._get()
        if ep is None or not ep.scoring_uri:
            raise MnistopsError(f"endpoint {self.name} ({self.env}) is not there: run stage=deploy first")
        key = self.ml.online_endpoints.get_keys(self.name).primary_key
        # score.py takes feedback on its one route: a body of exactly {"request_id", "label"}
        return ScoringTarget(ep.scoring_uri.rsplit("/score", 1)[0], key, self.name, feedback_path="/score")

    def stop(self) -> bool:
        print(f"endpoint {self.name} ({self.env}) is a managed online endpoint: it is not stopped but deleted, "
              f"with its deployments (az ml online-endpoint delete -n {self.name}); nothing was changed")
        return False

    def describe(self) -> List[str]:
        if self.dry_run:
            return [f"endpoint {self.name} ({self.env}): azure.dry_run=true, not read"]
        ep = self._get()
        if ep is None:
            return [f"endpoint {self.name} ({self.env}): not there (stage=deploy creates it)"]
        lines = [f"endpoint {self.name} ({self.env}): {text(ep.provisioning_state)}, {ep.scoring_uri}",
                 f"  traffic {dict(ep.traffic or {})}  mirror {dict(ep.mirror_traffic or {})}"]
        for d in self.ml.online_deployments.list(self.name):
            lines.append(f"  {d.name:6} {model_uri_of(d)}  {d.instance_count} x {d.instance_type}  "
                         f"{text(d.provisioning_state)}")
        lines.append(f"  keys: az ml online-endpoint get-credentials -n {self.name}")
        return lines

    def hints(self, version: ModelVersion) -> List[str]:
        if self.dry_run:
            return []
        target = self.target()
        return [f"  scoring URL: {target.url}/score   (the same payloads as the local endpoint's /score)",
                f"  key: az ml online-endpoint get-credentials -n {self.name}",
                "  pin a deployment: header azureml-model-deployment: <blue|green>"]

    def regenerate_key(self, which: str) -> str:
        if which not in KEYS:
            raise MnistopsError(f"endpoint.key={which!r} is not one of {', '.join(KEYS)}")
        if self.dry_run:
            raise MnistopsError("endpoint.action=regenerate-keys acts on Azure: it has no dry run")
        self.ml.online_endpoints.begin_regenerate_keys(name=self.name, key_type=which).result()
        return f"the endpoint's keys (az ml online-endpoint get-credentials -n {self.name})"
