"""What a stage needs from where it runs: the small interfaces a backend flavour implements.

A flavour (``local``, ``azure``) is a name, its config and one implementation of each interface
below; ``mnistops.backends.get(cfg)`` picks it by ``env.backend``. Stages are written once against
these interfaces and never ask which flavour they run on; capabilities (``JobRunner.remote``,
``MonitoringSchedule.remote``) are properties a stage may read, never flavour names.

    ModelRegistry       resolve a reference, register with lineage, aliases, decision tags,
                        bring in a version from another env's registry, download a version's files
    Endpoint            state, load a version into a slot (or remove it), traffic + mirror, rollback,
                        stop, scoring URL + credentials
    JobRunner           run the steps here, or submit them where the compute is and follow them
    MonitoringSchedule  what the endpoint collected, for stage=monitor to judge here (and each
                        deployment's answers, mirrored copies included, for stage=canary); and where
                        the platform also runs its own monitor on a schedule (remote), that schedule
    Provisioner         what an env needs before jobs run (None where nothing is needed)
    BatchScoring        score a folder or file of images with one version: on this machine's cores,
                        or as a job of the platform's batch endpoint on its cluster (`remote`)

SDKs are imported inside the flavour's implementation only.
"""

from __future__ import annotations

import abc
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence

from mnistops.backends import references
from mnistops.errors import MnistopsError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from mnistops.monitoring.window import Window
    from mnistops.result import StageResult


# --------------------------------------------------------------------------- model registry

@dataclass(frozen=True)
class ModelVersion:
    """One registered version, as every flavour describes it."""

    name: str
    version: str
    tags: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    run_id: Optional[str] = None  # the run that produced it, in its own env's tracking store

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class ModelRegistry(abc.ABC):
    """One env's model registry. `where` names it in messages ("the qa registry (sqlite:///…)")."""

    env: str
    where: str

    # -- reads: the flavour lists, the one rule in references.py resolves
    @abc.abstractmethod
    def versions(self, name: str) -> List[ModelVersion]:
        """Every version of `name` (any order); [] when the name is unknown."""

    @abc.abstractmethod
    def aliases(self, name: str) -> Dict[str, str]:
        """alias -> version of `name`; {} when none."""

    def resolve(self, reference: str, key: str = "model") -> ModelVersion:
        """`models:/name/N`, `models:/name/latest` or `models:/name@alias`, by the same rule on every
        flavour; `key` names the config key in the error."""
        ref = references.parse(reference, key)
        versions = self.versions(ref.name)
        aliases = self.aliases(ref.name) if ref.alias else {}
        return references.resolve(ref, versions, aliases, self.where)

    def get(self, name: str, alias: str) -> Optional[ModelVersion]:
        """The version `alias` points to, or None."""
        try:
            return self.resolve(f"models:/{name}@{alias}")
        except MnistopsError:
            return None

    def find(self, name: str, tags: Mapping[str, str]) -> List[ModelVersion]:
        """Versions of `name` carrying all of `tags`, newest first (idempotent promotion)."""
        found = [v for v in self.versions(name) if all(v.tags.get(k) == val for k, val in tags.items())]
        return sorted(found, key=lambda v: int(v.version), reverse=True)

    # -- writes
    @abc.abstractmethod
    def register(self, name: str, model_dir: Path, *, run_id: Optional[str], tags: Mapping[str, str],
                 description: str) -> ModelVersion:
        """A new version of `name` from an MLflow model directory on this machine, with its tags."""

    @abc.abstractmethod
    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point `alias` at `version` (moving it away from any other version)."""

    @abc.abstractmethod
    def set_tags(self, version: ModelVersion, tags: Mapping[str, str]) -> None:
        """Add or overwrite tags on a version (decisions, smoke outcomes)."""

    @abc.abstractmethod
    def download(self, version: ModelVersion, into: Path) -> Path:
        """The version's MLflow model directory under `into` (fetched once, checked against the
        weights digest it was registered with)."""

    def import_version(self, source: "ModelRegistry", version: ModelVersion, *, tags: Mapping[str, str],
                       description: str) -> ModelVersion:
        """A copy of `version` from another env's registry into this one, with `tags` (its lineage).
        Flavours with a native way (a shared registry) override this."""
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = source.download(version, Path(tmp))
            return self.register(version.name, model_dir, run_id=None, tags=tags, description=description)


# --------------------------------------------------------------------------- endpoints

@dataclass
class EndpointState:
    """What an endpoint serves now: slot -> model URI, the traffic and mirror split, and whether
    there is an earlier state to roll back to."""

    exists: bool = False
    deployments: Dict[str, str] = field(default_factory=dict)
    traffic: Dict[str, int] = field(default_factory=dict)
    mirror: Dict[str, int] = field(default_factory=dict)
    can_roll_back: bool = False
    previews: List[str] = field(default_factory=list)  # a dry run: the spec files written instead of sent

    def live(self) -> List[str]:
        """Deployments taking live traffic, most first."""
        return [d for d, pct in sorted(self.traffic.items(), key=lambda kv: -kv[1]) if pct > 0]

    def serving(self, model_uri: str) -> Optional[str]:
        """The deployment that already holds this version, if any."""
        return next((d for d, uri in sorted(self.deployments.items()) if uri == model_uri), None)


@dataclass(frozen=True)
class ScoringTarget:
    """Where clients send requests: a base URL (append /score, /predict, ...), a key and a name.
    `feedback_path` is the route that takes ground truth (`{"request_id", "label"}`): the local
    endpoint's /feedback, the scoring route itself on a managed endpoint (it has only /score)."""

    url: str
    key: Optional[str]
    name: str
    key_file: Optional[str] = None  # where the key is kept on this machine, when it is a file
    feedback_path: str = "/feedback"


class Endpoint(abc.ABC):
    """One env's real-time endpoint, hosting deployments (slots) and a traffic split."""

    name: str
    env: str

    @abc.abstractmethod
    def state(self) -> EndpointState:
        """The current state; `exists=False` when the endpoint was never created (or is not running)."""

    @abc.abstractmethod
    def ensure(self) -> bool:
        """Create or start the endpoint unless it is up; True when it had to."""

    @abc.abstractmethod
    def load(self, slot: str, version: ModelVersion) -> None:
        """Put `version` into deployment `slot`, loaded and ready; the traffic does not move. A
        failure raises MnistopsError and leaves the traffic as it was. (The deploy stage then sends
        a real request pinned to the slot before any traffic moves.)"""

    @abc.abstractmethod
    def set_traffic(self, traffic: Mapping[str, int], mirror: Mapping[str, int]) -> EndpointState:
        """Move live and mirror traffic at once, keeping the state before as the rollback point."""

    def unload(self, slot: str) -> EndpointState:
        """Remove deployment `slot` (it must take no live or mirror traffic): a rejected canary."""
        raise MnistopsError(f"endpoint {self.name}: this backend cannot remove a deployment")

    @abc.abstractmethod
    def rollback(self) -> EndpointState:
        """Restore the deployments and traffic before the last change."""

    @abc.abstractmethod
    def target(self) -> Optional[ScoringTarget]:
        """The scoring URL and key; None where nothing can be called (a dry run)."""

    @abc.abstractmethod
    def stop(self) -> bool:
        """Stop (local) or delete nothing and say how (managed); True when something stopped."""

    @abc.abstractmethod
    def describe(self) -> List[str]:
        """Lines for `stage=endpoint`: where it is, its deployments, traffic, health, restarts, keys."""

    def hints(self, version: ModelVersion) -> List[str]:
        """Lines telling a user how to call the endpoint, printed after a deploy."""
        return []

    def regenerate_key(self, which: str) -> str:
        """Rotate the `primary` or `secondary` scoring key; returns where the new key is."""
        raise MnistopsError(f"endpoint {self.name}: this backend cannot regenerate keys")


# --------------------------------------------------------------------------- jobs, monitoring, provisioning

class JobRunner(abc.ABC):
    """Where compute steps (data, train, evaluate, register, baseline, validate, gate) run."""

    #: True: steps are submitted elsewhere and followed from here; False: they run in this process
    remote: bool = False

    def submit(self, cfg: "DictConfig", steps: Sequence[str]) -> "StageResult":
        """Run `steps` (one job for a composite) where the compute is, follow it to its end, and
        fail with its status. Only called when `remote` is True."""
        raise NotImplementedError


class MonitoringSchedule(abc.ABC):
    """Where the endpoint's collected requests are, and whether the platform also judges them."""

    #: True: the platform also runs its own monitor on `monitor.schedule`; stage=monitor applies it
    remote: bool = False

    @abc.abstractmethod
    def read_window(self, cfg: "DictConfig", start: float, end: float, stats,
                  id_prefix: Optional[str] = None) -> Optional["Window"]:
        """What the env's endpoint collected in [start, end] (epoch seconds), only requests whose id
        starts with `id_prefix` when given: requests, images, outputs and feedback, for stage=monitor
        to judge here; None where nothing can be read (a dry run). `stats`
        (monitoring.request_log_reader.ReadStats) counts files, lines and torn lines."""

    def endpoint_name(self, cfg: "DictConfig") -> str:
        """The monitored endpoint as alerts, reports and the monitor run name it."""
        return cfg.monitor.endpoint or cfg.endpoint.name

    def answers(self, cfg: "DictConfig", start: float, end: float, deployments: Sequence[str]):
        """Every answer `deployments` gave in [start, end], live and mirrored copies alike, as
        quality.canary's evidence frame (one row per answer, request ids join the deployments); None
        where nothing can be read (a dry run). What stage=canary judges."""
        raise MnistopsError("this backend does not read the deployments' answers: no canary analysis here")

    def apply(self, cfg: "DictConfig") -> "StageResult":
        """Create or update the schedule (it follows the live deployment). Only when `remote`."""
        raise NotImplementedError

    def follow(self, endpoint_state: EndpointState) -> None:
        """The live deployment changed: point an existing schedule at it (no-op where none)."""


class Provisioner(abc.ABC):
    @abc.abstractmethod
    def provision(self, cfg: "DictConfig") -> "StageResult":
        """Ensure, idempotently, what the env needs before jobs run."""


# --------------------------------------------------------------------------- batch scoring

@dataclass
class BatchOutcome:
    """What a batch scoring did, for stage=batch to report and record (the same on every flavour)."""

    output: str  # where the rows are (a path here, or the job's output URI)
    input_digest: str = ""  # sha256 of the input read (a folder: of its files' names and digests)
    images: int = 0
    seconds: float = 0.0  # scoring alone (reading and writing excluded); 0 where it ran elsewhere
    digits: Dict[str, int] = field(default_factory=dict)  # predicted digit -> images
    ood: Optional[int] = None  # images judged out of distribution, where the version has a detector
    where: str = ""  # "this machine, 2 threads", "batch endpoint mnist-batch-qa on cpu-cluster"
    previews: List[str] = field(default_factory=list)  # a dry run: the spec files written instead of sent


class BatchScoring(abc.ABC):
    """Score `batch.input` into `batch.output` with one registered version, every image answered as
    the online endpoint answers it. Bad input fails before anything is written."""

    #: True: the images are scored by a job on the platform's cluster, followed from here
    remote: bool = False

    @abc.abstractmethod
    def score(self, version: ModelVersion) -> BatchOutcome:
        """Read the input (failing on a bad one before scoring), score it, write the output whole."""


# --------------------------------------------------------------------------- the flavour

class Backend(abc.ABC):
    """A flavour bound to one composed config (one env)."""

    name: str

    def __init__(self, cfg: "DictConfig"):
        self.cfg = cfg

    @abc.abstractmethod
    def registry(self, env: Optional[str] = None) -> ModelRegistry:
        """This env's registry, or another env's (read side of promotion: `promote.source_env`)."""

    @abc.abstractmethod
    def endpoint(self) -> Endpoint:
        """This env's endpoint (`endpoint.*`)."""

    @property
    @abc.abstractmethod
    def jobs(self) -> JobRunner: ...

    @property
    @abc.abstractmethod
    def monitoring(self) -> MonitoringSchedule: ...

    @property
    def provisioner(self) -> Optional[Provisioner]:
        return None

    @property
    def batch(self) -> BatchScoring:
        """This env's batch scoring (stage=batch)."""
        raise MnistopsError(f"env.backend={self.name} cannot score batches")

    def tracking_uri(self, env: Optional[str] = None) -> Optional[str]:
        """This env's (or `env`'s) MLflow tracking URI when the flavour provides one (the workspace's
        MLflow); None: the env's `tracking_uri`, or its own sqlite store."""
        return None

    def store_uri(self, env: Optional[str] = None) -> str:
        """The tracking + registry URI of this env, or of another env (where production data are
        handed over, where a retraining is judged)."""
        from mnistops import tracking
        from mnistops.config import other_env

        name = env or self.cfg.env.name
        node = self.cfg.env if name == self.cfg.env.name else other_env(self.cfg, name)
        return self.tracking_uri(env) or tracking.store_uri(self.cfg, node)
