"""The admin routes (the admin key, never a scoring key): state, load a deployment, delete one,
traffic + mirror, rollback. Each change is a plan — committed state in, new state out, validated
before anything moves — that ``cluster.py`` applies on every worker at once."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import List

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mnistops.serving import schemas as S, traffic_split
from mnistops.serving.deployments import INFO_KEYS, NAME_RE, now_iso
from mnistops.serving.errors import Conflict, Invalid, NotFound, json_response
from mnistops.serving.openapi import doc
from mnistops.serving.runtime import Runtime

SECURED = "adminKey"


# --------------------------------------------------------------------------- plans: state -> new state

def snapshot(state: dict) -> dict:
    return copy.deepcopy({k: state[k] for k in ("deployments", "traffic", "mirror_traffic")})


def _next(state: dict) -> dict:
    new = copy.deepcopy(state)
    new["previous"] = snapshot(state)
    return new


def deploy_info(name: str, body) -> dict:
    if not NAME_RE.match(name):
        raise Invalid(f"deployment name {name!r}: use letters, digits, '-' or '_' (at most 63)", "deployment")
    if not isinstance(body, dict):
        raise Invalid("the body must be a JSON object {\"path\", \"model_name\", \"version\", \"model_uri\"}", "body")
    path = body.get("path")
    if not isinstance(path, str) or not path:
        raise Invalid("'path' (the model dir) is required", "path")
    if not Path(path).is_absolute():
        raise Invalid(f"'path' must be absolute, got {path!r}", "path")
    info = {"path": path}
    for key in ("model_name", "version", "model_uri"):
        value = body.get(key, "")
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise Invalid(f"'{key}' must be a string", key)
        info[key] = str(value)
    info["loaded_at"] = now_iso()
    return {k: info[k] for k in INFO_KEYS}


def plan_deploy(name: str, info: dict):
    def plan(state: dict) -> dict:
        new = _next(state)
        new["deployments"][name] = info
        return new
    return plan


def plan_delete(name: str):
    def plan(state: dict) -> dict:
        if name not in state["deployments"]:
            raise NotFound(f"no deployment named {name!r}", "deployment")
        live, mirrored = state["traffic"].get(name, 0), state["mirror_traffic"].get(name, 0)
        if live > 0 or mirrored > 0:
            raise Conflict(f"deployment {name!r} still has traffic ({live}% live, {mirrored}% mirror): "
                           "move its traffic first")
        new = _next(state)
        del new["deployments"][name]
        new["traffic"].pop(name, None)
        new["mirror_traffic"].pop(name, None)
        return new
    return plan


def plan_traffic(body):
    """The split checked by ``traffic_split`` (the rule the deploy stage uses too), then against the
    state: every named deployment exists, no mirror to a deployment that now takes live traffic."""
    if not isinstance(body, dict) or "traffic" not in body:
        raise Invalid("the body must be {\"traffic\": {deployment: percent}, \"mirror_traffic\"?: {...}}", "traffic")
    try:
        traffic, mirror_given = traffic_split.split(body["traffic"], body.get("mirror_traffic"))
    except traffic_split.SplitError as exc:
        raise Invalid(str(exc), exc.field) from None

    def plan(state: dict) -> dict:
        try:
            mirror = traffic_split.mirror(state["mirror_traffic"], traffic) if mirror_given is None else mirror_given
        except traffic_split.SplitError as exc:
            raise Invalid(str(exc), exc.field) from None
        for key, values in (("traffic", traffic), ("mirror_traffic", mirror)):
            for name in values:
                if name not in state["deployments"]:
                    raise Invalid(f"'{key}': no deployment named {name!r}", key)
        new = _next(state)
        new["traffic"], new["mirror_traffic"] = traffic, {n: p for n, p in mirror.items() if p > 0}
        return new
    return plan


def plan_rollback(state: dict) -> dict:
    prev = state["previous"]
    if not prev:
        raise Conflict("nothing to roll back to: no previous state recorded")
    new = copy.deepcopy(prev)
    new["previous"] = snapshot(state)
    return new


# --------------------------------------------------------------------------- the routes

def merged_status(rt: Runtime, workers: List[dict]) -> dict:
    """Every worker's view in one: a deployment is loaded/healthy when it is so in every worker."""
    workers = sorted(workers, key=lambda w: w["pid"])  # the same answer whichever worker is asked
    out = workers[0]["status"]
    for name, dep in out["deployments"].items():
        views = [w["status"]["deployments"].get(name, {}) for w in workers]
        dep["loaded"] = all(v.get("loaded", False) for v in views)
        dep["healthy"] = all(v.get("healthy", False) for v in views)
        dep["error"] = next((v.get("error") for v in views if v.get("error")), None)
        dep["queue_depth"] = sum(int(v.get("queue_depth", 0)) for v in views)
        # since when every worker serves it: the last worker's load (a restarted server loads anew)
        dep["serving_since"] = max((v.get("serving_since") or "" for v in views), default="") or None
    out["name"], out["env"] = rt.settings.name, rt.settings.env
    out["workers"] = [{"pid": w["pid"], "generation": w["status"]["generation"],
                       "loaded": {n: bool(d.get("loaded")) for n, d in w["status"]["deployments"].items()}}
                      for w in workers]
    return out


def router(rt: Runtime) -> APIRouter:
    r = APIRouter(tags=["admin"])

    async def state() -> dict:
        return merged_status(rt, await rt.cluster.statuses())

    @r.get("/admin/state", **doc(S.AdminState, errors=(401,), secured=SECURED))
    async def admin_state(request: Request) -> Response:
        rt.check_admin_key(request.scope)
        return json_response(await state())

    @r.post("/admin/deployments/{deployment}",
            **doc(S.DeploymentStatus, body=S.LoadRequest, errors=(400, 401, 413, 415, 422), secured=SECURED,
                  summary="Load a model into a deployment slot, in every worker (warmed up before it replaces "
                          "the old one)"))
    async def admin_deploy(request: Request, deployment: str) -> Response:
        rt.check_admin_key(request.scope)
        info = deploy_info(deployment, await rt.json_body(request))
        await rt.cluster.change(plan_deploy(deployment, info))
        return json_response((await state())["deployments"][deployment])

    @r.delete("/admin/deployments/{deployment}",
              **doc(S.AdminState, errors=(401, 404, 409), secured=SECURED,
                    summary="Remove a deployment without traffic"))
    async def admin_delete(request: Request, deployment: str) -> Response:
        rt.check_admin_key(request.scope)
        await rt.cluster.change(plan_delete(deployment))
        return json_response(await state())

    @r.put("/admin/traffic", **doc(S.AdminState, body=S.TrafficRequest, errors=(400, 401, 413, 415, 422),
                                   secured=SECURED, summary="Set the traffic split and mirror traffic"))
    async def admin_traffic(request: Request) -> Response:
        rt.check_admin_key(request.scope)
        await rt.cluster.change(plan_traffic(await rt.json_body(request)))
        return json_response(await state())

    @r.post("/admin/rollback", **doc(S.AdminState, errors=(401, 409, 422), secured=SECURED,
                                     summary="Restore the previous deployments and traffic"))
    async def admin_rollback(request: Request) -> Response:
        rt.check_admin_key(request.scope)
        await rt.cluster.change(plan_rollback)
        return json_response(await state())

    return r
