"""Talking to an endpoint the way users do: authenticated web requests with real test images.
Shared by stage=deploy (the readiness probe before traffic moves), stage=smoke and stage=traffic.

``SAMPLE_PNG`` is a real MNIST test digit (test image 0, a 7) shipped with the package, 28x28
white on black: what ``stage=deploy``'s curl hint uploads and ``sample_request`` sends, so neither
needs the dataset at hand."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import httpx
import numpy as np

SAMPLE_PNG = Path(__file__).resolve().parent / "serving" / "static" / "sample.png"
SAMPLE_LABEL = 7


def headers(key: str, deployment: Optional[str] = None, request_id: Optional[str] = None) -> dict:
    h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if deployment:
        h["azureml-model-deployment"] = deployment
    if request_id:  # the endpoint keeps a valid x-request-id as the request's id (collection, feedback)
        h["x-request-id"] = request_id
    return h


def score(client: httpx.Client, url: str, key: str, images: np.ndarray, deployment: Optional[str] = None,
          timeout: float = 10.0, request_id: Optional[str] = None) -> Tuple[int, dict]:
    resp = client.post(f"{url}/score", json={"data": images.tolist()}, headers=headers(key, deployment, request_id),
                       timeout=timeout)
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, {"error": resp.text[:200]}


def feedback(client: httpx.Client, url: str, key: str, request_id: str, label: int, timeout: float = 10.0,
             path: str = "/feedback") -> int:
    """Ground truth for a scored request: ``POST {path}`` (the target's ``feedback_path``: the local
    endpoint's /feedback, a managed endpoint's /score); the status code (202 when recorded)."""
    resp = client.post(f"{url}{path}", json={"request_id": request_id, "label": int(label)},
                       headers=headers(key), timeout=timeout)
    return resp.status_code


def sample_image() -> np.ndarray:
    """``SAMPLE_PNG`` as uint8 (1, 28, 28)."""
    from PIL import Image

    with Image.open(SAMPLE_PNG) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)[None]


def sample_request(url: str, key: str, deployment: Optional[str] = None) -> Tuple[int, dict]:
    """One real scoring request with the packaged test digit (needs no dataset at hand)."""
    with httpx.Client() as client:
        try:
            return score(client, url, key, sample_image(), deployment)
        except httpx.HTTPError as err:
            return 0, {"error": str(err)}


def write_sample_png(image: np.ndarray, path: Path) -> Path:
    from PIL import Image

    Image.fromarray(image.astype(np.uint8)).save(path)
    return path
