"""One traffic-split rule: the deploy stage (endpoint.traffic / endpoint.mirror_traffic), the admin
route's plan (PUT /admin/traffic) and its OpenAPI model (schemas.TrafficRequest) give the same
verdict and the same message for the same map; only the key's name differs (``endpoint.traffic`` in
the config, ``traffic`` in the JSON body)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from conftest import compose
from mnistops.errors import MnistopsError
from mnistops.serving import admin, traffic_split
from mnistops.serving.errors import Invalid
from mnistops.serving.schemas import TrafficRequest
from mnistops.stages.deploy import desired_traffic

# (Hydra override value, the same map as JSON, words of the message); None: not given
CASES = [
    ("{blue:50,green:60}", None, {"blue": 50, "green": 60}, None, "'traffic' must sum to 100, got 110"),
    ("{blue:150}", None, {"blue": 150}, None, "'traffic.blue' must be an integer 0..100, got 150"),
    ("{blue:-10,green:110}", None, {"blue": -10, "green": 110}, None, "must be an integer 0..100, got -10"),
    ("{blue:50.5,green:49.5}", None, {"blue": 50.5, "green": 49.5}, None, "'traffic.blue' must be an integer"),
    ("{blue:true,green:99}", None, {"blue": True, "green": 99}, None, "must be an integer 0..100, got True"),
    ("100", None, 100, None, "'traffic' must be an object {deployment: percent}"),
    ("{blue:100}", "{blue:10}", {"blue": 100}, {"blue": 10}, "'mirror_traffic': 'blue' also has live traffic"),
    ("{blue:100}", "{green:60,red:50}", {"blue": 100}, {"green": 60, "red": 50},
     "'mirror_traffic' must sum to at most 100, got 110"),
    ("{blue:100}", "{green:101}", {"blue": 100}, {"green": 101}, "'mirror_traffic.green' must be an integer 0..100"),
]


def stage_verdict(traffic: str, mirror) -> str:
    overrides = [f"endpoint.traffic={traffic}"] + ([f"endpoint.mirror_traffic={mirror}"] if mirror else [])
    with pytest.raises(MnistopsError) as err:
        desired_traffic(compose(overrides), "blue")
    return str(err.value)


def admin_verdict(body: dict) -> str:
    with pytest.raises(Invalid) as err:
        admin.plan_traffic(body)
    assert err.value.status == 422 and err.value.field in ("traffic", "mirror_traffic")
    return err.value.message


def schema_verdict(body: dict) -> str:
    with pytest.raises(ValidationError) as err:
        TrafficRequest.model_validate(body)
    (first,) = err.value.errors()
    return first["msg"].removeprefix("Value error, ")


@pytest.mark.parametrize("hydra_traffic,hydra_mirror,traffic,mirror,words", CASES,
                         ids=[c[0] + (f"+{c[1]}" if c[1] else "") for c in CASES])
def test_one_verdict_one_message_everywhere(hydra_traffic, hydra_mirror, traffic, mirror, words):
    body = {"traffic": traffic, **({"mirror_traffic": mirror} if mirror is not None else {})}
    from_admin, from_schema = admin_verdict(body), schema_verdict(body)
    from_stage = stage_verdict(hydra_traffic, hydra_mirror)
    assert words in from_admin
    assert from_schema == from_admin
    assert "'endpoint." in from_stage and from_stage.replace("'endpoint.", "'") == from_admin
    assert "\n" not in from_stage


def test_good_splits_pass_everywhere():
    for traffic, mirror in (({"blue": 100}, None), ({"blue": 20, "green": 80}, None),
                            ({"blue": 100, "green": 0}, {"green": 25}), ({"blue": 100}, {"blue": 0, "green": 100})):
        body = {"traffic": traffic, **({"mirror_traffic": mirror} if mirror is not None else {})}
        assert TrafficRequest.model_validate(body).traffic == traffic
        assert traffic_split.split(traffic, mirror) == (traffic, mirror)
        admin.plan_traffic(body)  # no verdict before the state is known
        hydra = "{" + ",".join(f"{k}:{v}" for k, v in traffic.items()) + "}"
        extra = [] if mirror is None else ["endpoint.mirror_traffic={" + ",".join(f"{k}:{v}" for k, v in
                                                                                  mirror.items()) + "}"]
        assert desired_traffic(compose([f"endpoint.traffic={hydra}", *extra]), "blue") == traffic
    assert desired_traffic(compose([]), "green") == {"green": 100}  # no split given: all to the new version
