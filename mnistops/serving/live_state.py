"""One worker's live copy of the endpoint's state: loaded deployment slots, traffic, mirror.

A worker serves exactly one committed state (a ``generation`` of ``state.json``) at a time. A change
arrives in two steps (driven by ``cluster.py`` for every worker at once): ``prepare`` loads and warms
every model the new state needs *before* anything changes (a failure changes nothing), ``commit``
swaps the new slots, router and traffic in, in one step of the event loop, so a request sees either
the old state or the new one; replaced slots drain their queues before they close. Slots whose
info is unchanged are kept as they are (no reload).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from mnistops.serving.batching import MicroBatcher
from mnistops.serving.deployments import Deployment, LoadError, OnnxModel, load_model, now_iso, read_state
from mnistops.serving.errors import Invalid, NotFound
from mnistops.serving.prometheus import Metrics
from mnistops.serving.routing import TrafficRouter
from mnistops.serving.settings import ServerSettings

log = logging.getLogger("mnistops.serving")


class LiveState:
    def __init__(self, endpoint_dir: Path, settings: ServerSettings, metrics: Metrics):
        self.dir = Path(endpoint_dir)
        self.settings = settings
        self.metrics = metrics
        self.slots: Dict[str, Deployment] = {}
        self.traffic: Dict[str, int] = {}
        self.mirror: Dict[str, int] = {}
        self.previous: Optional[dict] = None
        self.generation = -1  # nothing served yet
        self.router = TrafficRouter({}, {})
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self._pending: Dict[str, Tuple[dict, Dict[str, Deployment]]] = {}
        self._background: set = set()

    # ------------------------------------------------------------------ lifecycle
    async def startup(self) -> None:
        """Serve what state.json holds now (a deployment that fails to load is kept, with its error)."""
        await self.catch_up(read_state(self.dir), strict=False)

    async def catch_up(self, state: dict, strict: bool = False) -> None:
        """Prepare + commit ``state`` locally (a worker that starts, or finds a newer generation)."""
        await self.prepare("local", state, strict=strict)
        self.commit("local")

    async def shutdown(self) -> None:
        for slot in self.slots.values():
            if slot.batcher is not None:
                await slot.batcher.close(drain_timeout=2.0)
        self._loader.shutdown(wait=False)

    def _activate(self, slot: Deployment, model: OnnxModel) -> None:
        s = self.settings
        batcher = MicroBatcher(slot.name, model.score, max_batch=s.max_batch, max_wait_ms=s.max_wait_ms,
                               max_queue=s.max_queue, metrics=self.metrics, on_result=slot.on_result)
        batcher.start()
        slot.model, slot.batcher, slot.healthy, slot.error = model, batcher, True, None
        slot.serving_since = now_iso()

    def _retire(self, slot: Deployment) -> None:
        if slot.batcher is not None:
            task = asyncio.get_running_loop().create_task(slot.batcher.close())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _load(self, path: str) -> OnnxModel:
        return await asyncio.get_running_loop().run_in_executor(self._loader, load_model, path)

    # ------------------------------------------------------------------ the two steps of a change
    async def prepare(self, txn: str, state: dict, strict: bool = True) -> None:
        """Load every model ``state`` needs that this worker does not hold yet. ``strict``: a model
        that does not load fails the change (LoadError/Invalid, nothing changed); otherwise the slot
        is kept with its error (a worker starting with a broken deployment still serves the others)."""
        slots: Dict[str, Deployment] = {}
        fresh: List[Deployment] = []
        live = _with_traffic(state["traffic"], state["mirror_traffic"])
        live_now = _with_traffic(self.traffic, self.mirror)
        try:
            for name, info in state["deployments"].items():
                current = self.slots.get(name)
                # kept as it is: an unchanged slot, unless it failed to load and is about to get traffic
                gains_traffic = name in live and name not in live_now
                if current is not None and current.info == info and (current.loaded or not (strict and gains_traffic)):
                    slots[name] = current
                    continue
                slot = Deployment(name, dict(info))
                try:
                    model = await self._load(info["path"])
                except LoadError as exc:
                    if strict:
                        raise _named(name, exc, name in live) from None
                    slot.error = str(exc)
                    log.error("deployment %s (%s v%s) failed to load: %s", name, info.get("model_name"),
                              info.get("version"), exc)
                else:
                    self._activate(slot, model)
                    fresh.append(slot)
                slots[name] = slot
        except BaseException:
            for slot in fresh:
                self._retire(slot)
            raise
        self._pending[txn] = (state, slots)

    def commit(self, txn: str) -> None:
        """Swap the prepared state in (one synchronous step: no request sees half of it)."""
        state, slots = self._pending.pop(txn)
        old = self.slots
        self.slots = slots
        self.traffic = dict(state["traffic"])
        self.mirror = dict(state["mirror_traffic"])
        self.previous = state["previous"]
        self.generation = state["generation"]
        self.router = TrafficRouter(self.traffic, self.mirror)
        self.metrics.set_topology(self.traffic, self.mirror, self.health())
        for name, slot in old.items():
            if slots.get(name) is not slot:
                self._retire(slot)
        for name, slot in slots.items():
            if old.get(name) is not slot and slot.loaded:
                info = slot.info
                log.info("deployment %s: serving %s v%s from %s", name, info.get("model_name"), info.get("version"),
                         info.get("path"))
        log.info("generation %d: traffic %s mirror %s", self.generation, self.traffic, self.mirror)

    def abort(self, txn: str) -> None:
        pending = self._pending.pop(txn, None)
        if pending is None:
            return
        for name, slot in pending[1].items():
            if self.slots.get(name) is not slot:
                self._retire(slot)

    # ------------------------------------------------------------------ views
    def health(self) -> Dict[str, int]:
        return {n: int(s.loaded and s.healthy) for n, s in self.slots.items()}

    def state(self) -> dict:
        return {"deployments": {n: dict(s.info) for n, s in self.slots.items()}, "traffic": dict(self.traffic),
                "mirror_traffic": dict(self.mirror), "previous": self.previous, "generation": self.generation}

    def status(self) -> dict:
        """This worker's view: the state plus, per deployment, loaded/healthy/error/queue depth."""
        out = self.state()
        for name, slot in self.slots.items():
            out["deployments"][name].update(loaded=slot.loaded, healthy=slot.loaded and slot.healthy,
                                            error=slot.error, serving_since=slot.serving_since,
                                            queue_depth=slot.batcher.depth if slot.batcher is not None else 0)
        return out

    # ------------------------------------------------------------------ readiness
    async def probe(self, slot: Deployment, timeout: float = 1.0) -> Optional[str]:
        """None when the slot answers a test image now, else the reason."""
        if not slot.loaded:
            return f"deployment {slot.name} is not loaded" + (f": {slot.error}" if slot.error else "")
        x = np.zeros((1, 1, 28, 28), np.float32)
        try:
            scored = await asyncio.wait_for(slot.batcher.submit(x), timeout)
        except asyncio.TimeoutError:
            return f"deployment {slot.name} did not answer within {timeout:.1f}s"
        except Exception as exc:
            return f"deployment {slot.name} failed a test inference: {exc}"
        if scored.probabilities.shape != (1, 10):
            return f"deployment {slot.name} answered shape {scored.probabilities.shape}"
        return None

    async def readiness(self, only: Optional[str] = None) -> Tuple[bool, List[str]]:
        if only is not None:
            if only not in self.slots:
                raise NotFound(f"no deployment named {only!r}", "deployment")
            names = [only]
        else:
            names = [n for n, pct in self.traffic.items() if pct > 0]
            if not names:
                return False, ["no deployment has traffic"]
        reasons = []
        for name in names:
            slot = self.slots.get(name)
            reason = f"deployment {name} has traffic but does not exist" if slot is None else await self.probe(slot)
            if reason:
                reasons.append(reason)
        return not reasons, reasons


def _with_traffic(traffic: Dict[str, int], mirror: Dict[str, int]) -> set:
    return {n for n, p in {**traffic, **mirror}.items() if p > 0}


def _named(name: str, exc: LoadError, has_traffic: bool) -> Exception:
    if has_traffic:
        return Invalid(f"deployment {name!r} takes traffic but cannot be loaded: {exc}")
    return LoadError(str(exc), "path")
