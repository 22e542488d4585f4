"""The endpoint's live state: deployment slots, traffic, mirror, ``previous``, and the admin changes.

Every admin change runs under one lock, loads and warms any model *before* touching the live
state, then swaps in the new slots, records the old state as ``previous`` and persists state.json.
A failed load changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from mnistops.serving.batching import MicroBatcher
from mnistops.serving.deployments import (INFO_KEYS, NAME_RE, Deployment, LoadError, OnnxModel, load_model,
                                          now_iso, read_state, snapshot, write_state)
from mnistops.serving.metrics import Metrics
from mnistops.serving.routing import TrafficRouter
from mnistops.serving.settings import ServerConfig

log = logging.getLogger("mnistops.serving")


class Conflict(Exception):
    """The change contradicts the current state (409)."""


class Invalid(Exception):
    """The change is malformed or impossible (422)."""


class NotFound(Exception):
    """No such deployment (404)."""


class Endpoint:
    def __init__(self, endpoint_dir: Path, cfg: ServerConfig, metrics: Metrics):
        self.dir = Path(endpoint_dir)
        self.cfg = cfg
        self.metrics = metrics
        self.slots: Dict[str, Deployment] = {}
        self.traffic: Dict[str, int] = {}
        self.mirror: Dict[str, int] = {}
        self.previous: Optional[dict] = None
        self.router = TrafficRouter({}, {})
        self._lock = asyncio.Lock()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self._background: set = set()

    # ------------------------------------------------------------------ lifecycle
    async def startup(self) -> None:
        state = read_state(self.dir)
        loop = asyncio.get_running_loop()
        for name, info in state["deployments"].items():
            slot = Deployment(name, dict(info))
            try:
                model = await loop.run_in_executor(self._loader, load_model, info["path"])
            except LoadError as exc:
                slot.error = str(exc)
                log.error("deployment %s (%s v%s) failed to load: %s", name, info.get("model_name"),
                          info.get("version"), exc)
            else:
                self._activate(slot, model)
                log.info("deployment %s: loaded %s v%s from %s", name, info.get("model_name"), info.get("version"),
                         info["path"])
            self.slots[name] = slot
        self.traffic = dict(state["traffic"])
        self.mirror = dict(state["mirror_traffic"])
        self.previous = state["previous"]
        self._rebuild()

    async def shutdown(self) -> None:
        for slot in self.slots.values():
            if slot.batcher is not None:
                await slot.batcher.close(drain_timeout=2.0)
        self._loader.shutdown(wait=False)

    def _activate(self, slot: Deployment, model: OnnxModel) -> None:
        cfg = self.cfg
        batcher = MicroBatcher(slot.name, model.predict, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms,
                               max_queue=cfg.max_queue, metrics=self.metrics, on_result=slot.on_result)
        batcher.start()
        slot.model, slot.batcher, slot.healthy, slot.error = model, batcher, True, None

    def _rebuild(self) -> None:
        self.router = TrafficRouter(self.traffic, self.mirror)
        self.metrics.set_topology(self.traffic, self.mirror,
                                  {n: int(s.loaded and s.healthy) for n, s in self.slots.items()})

    def _retire(self, slot: Deployment) -> None:
        if slot.batcher is not None:
            task = asyncio.get_running_loop().create_task(slot.batcher.close())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ views
    def infos(self) -> Dict[str, dict]:
        return {name: dict(slot.info) for name, slot in self.slots.items()}

    def state(self) -> dict:
        return {"deployments": self.infos(), "traffic": dict(self.traffic), "mirror_traffic": dict(self.mirror),
                "previous": self.previous}

    def status(self) -> dict:
        out = self.state()
        out["name"] = self.cfg.name
        out["env"] = self.cfg.env
        for name, slot in self.slots.items():
            out["deployments"][name].update(loaded=slot.loaded, healthy=slot.loaded and slot.healthy,
                                            error=slot.error,
                                            queue_depth=slot.batcher.depth if slot.batcher is not None else 0)
        return out

    def _persist(self) -> None:
        write_state(self.dir, self.state())

    # ------------------------------------------------------------------ readiness
    async def probe(self, slot: Deployment, timeout: float = 1.0) -> Optional[str]:
        """None when the slot answers a test image now, else the reason."""
        if not slot.loaded:
            return f"deployment {slot.name} is not loaded" + (f": {slot.error}" if slot.error else "")
        x = np.zeros((1, 1, 28, 28), np.float32)
        try:
            probs = await asyncio.wait_for(slot.batcher.submit(x), timeout)
        except asyncio.TimeoutError:
            return f"deployment {slot.name} did not answer within {timeout:.1f}s"
        except Exception as exc:
            return f"deployment {slot.name} failed a test inference: {exc}"
        if probs.shape != (1, 10):
            return f"deployment {slot.name} answered shape {probs.shape}"
        return None

    async def readiness(self, only: Optional[str] = None) -> Tuple[bool, List[str]]:
        if only is not None:
            if only not in self.slots:
                raise NotFound(f"no deployment named {only!r}")
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

    # ------------------------------------------------------------------ admin changes
    async def _load(self, path: str) -> OnnxModel:
        return await asyncio.get_running_loop().run_in_executor(self._loader, load_model, path)

    async def deploy(self, name: str, body: dict) -> dict:
        if not NAME_RE.match(name):
            raise Invalid(f"deployment name {name!r}: use letters, digits, '-' or '_' (at most 63)")
        info = _info(body)
        async with self._lock:
            model = await self._load(info["path"])  # LoadError -> 422, nothing changed
            before = snapshot(self.infos(), self.traffic, self.mirror)
            slot = Deployment(name, info)
            self._activate(slot, model)
            old = self.slots.get(name)
            self.slots[name] = slot
            self.previous = before
            self._persist()
            self._rebuild()
            if old is not None:
                self._retire(old)
            log.info("deployment %s: loaded %s v%s from %s", name, info["model_name"], info["version"], info["path"])
            return self.status()["deployments"][name]

    async def delete(self, name: str) -> None:
        async with self._lock:
            slot = self.slots.get(name)
            if slot is None:
                raise NotFound(f"no deployment named {name!r}")
            if self.traffic.get(name, 0) > 0 or self.mirror.get(name, 0) > 0:
                raise Conflict(f"deployment {name!r} still has traffic "
                               f"({self.traffic.get(name, 0)}% live, {self.mirror.get(name, 0)}% mirror): "
                               "move its traffic first")
            self.previous = snapshot(self.infos(), self.traffic, self.mirror)
            del self.slots[name]
            self.traffic.pop(name, None)
            self.mirror.pop(name, None)
            self._persist()
            self._rebuild()
            self._retire(slot)
            log.info("deployment %s: deleted", name)

    async def set_traffic(self, traffic, mirror) -> dict:
        async with self._lock:
            traffic = _percentages(traffic, "traffic")
            mirror = dict(self.mirror) if mirror is None else _percentages(mirror, "mirror_traffic")
            if sum(traffic.values()) != 100:
                raise Invalid(f"'traffic' must sum to 100, got {sum(traffic.values())}")
            for key, values in (("traffic", traffic), ("mirror_traffic", mirror)):
                for name, pct in values.items():
                    slot = self.slots.get(name)
                    if slot is None:
                        raise Invalid(f"'{key}': no deployment named {name!r}")
                    if pct > 0 and not slot.loaded:
                        raise Invalid(f"'{key}': deployment {name!r} is not loaded ({slot.error})")
            mirror = {n: p for n, p in mirror.items() if p > 0}
            for name in mirror:
                if traffic.get(name, 0) > 0:
                    raise Invalid(f"'mirror_traffic': {name!r} also has live traffic; mirror only to a deployment "
                                  "with 0% live traffic")
            if sum(mirror.values()) > 100:
                raise Invalid("'mirror_traffic' must sum to at most 100")
            self.previous = snapshot(self.infos(), self.traffic, self.mirror)
            self.traffic, self.mirror = traffic, mirror
            self._persist()
            self._rebuild()
            log.info("traffic %s mirror %s", traffic, mirror)
            return self.status()

    async def rollback(self) -> dict:
        async with self._lock:
            prev = self.previous
            if not prev:
                raise Conflict("nothing to roll back to: no previous state recorded")
            wanted = prev.get("deployments") or {}
            fresh: Dict[str, Tuple[dict, Optional[OnnxModel]]] = {}
            for name, info in wanted.items():  # load everything first: a failure changes nothing
                current = self.slots.get(name)
                same = current is not None and current.loaded and all(
                    str(current.info.get(k)) == str(info.get(k)) for k in ("path", "version", "model_name"))
                if same:
                    fresh[name] = (info, None)
                else:
                    try:
                        fresh[name] = (info, await self._load(info["path"]))
                    except LoadError as exc:
                        raise Invalid(f"rollback: deployment {name} cannot be reloaded: {exc}") from None
            before = snapshot(self.infos(), self.traffic, self.mirror)
            old_slots = self.slots
            slots: Dict[str, Deployment] = {}
            for name, (info, model) in fresh.items():
                if model is None:
                    slots[name] = old_slots[name]
                else:
                    slot = Deployment(name, {k: str(info.get(k, "")) for k in INFO_KEYS})
                    self._activate(slot, model)
                    slots[name] = slot
            self.slots = slots
            self.traffic = dict(prev.get("traffic") or {})
            self.mirror = dict(prev.get("mirror_traffic") or {})
            self.previous = before
            self._persist()
            self._rebuild()
            for name, slot in old_slots.items():
                if slots.get(name) is not slot:
                    self._retire(slot)
            log.info("rolled back: traffic %s mirror %s", self.traffic, self.mirror)
            return self.status()


def _info(body) -> dict:
    if not isinstance(body, dict):
        raise Invalid("the body must be a JSON object {\"path\", \"model_name\", \"version\", \"model_uri\"}")
    path = body.get("path")
    if not isinstance(path, str) or not path:
        raise Invalid("'path' (the model dir) is required")
    if not Path(path).is_absolute():
        raise Invalid(f"'path' must be absolute, got {path!r}")
    info = {"path": path}
    for key in ("model_name", "version", "model_uri"):
        value = body.get(key, "")
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise Invalid(f"'{key}' must be a string")
        info[key] = str(value)
    info["loaded_at"] = now_iso()
    return {k: info[k] for k in INFO_KEYS}


def _percentages(values, key: str) -> Dict[str, int]:
    if not isinstance(values, dict):
        raise Invalid(f"'{key}' must be an object {{deployment: percent}}")
    out = {}
    for name, pct in values.items():
        if not isinstance(pct, int) or isinstance(pct, bool) or not 0 <= pct <= 100:
            raise Invalid(f"'{key}.{name}' must be an integer 0..100, got {pct!r}")
        out[name] = pct
    return out
