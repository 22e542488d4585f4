"""Talking to an endpoint the way users do: authenticated web requests with real test images.
Shared by stage=deploy (the readiness probe before traffic moves), stage=smoke and stage=traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import httpx
import numpy as np

SAMPLE_IMAGE: Optional[np.ndarray] = None


def headers(key: str, deployment: Optional[str] = None) -> dict:
    h = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if deployment:
        h["azureml-model-deployment"] = deployment
    return h


def score(client: httpx.Client, url: str, key: str, images: np.ndarray, deployment: Optional[str] = None,
          timeout: float = 10.0) -> Tuple[int, dict]:
    resp = client.post(f"{url}/score", json={"data": images.tolist()}, headers=headers(key, deployment),
                       timeout=timeout)
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, {"error": resp.text[:200]}


def feedback(client: httpx.Client, url: str, key: str, request_id: str, label: int, timeout: float = 10.0) -> int:
    """Ground truth for a scored request: ``POST /feedback``; the status code (202 when recorded)."""
    resp = client.post(f"{url}/feedback", json={"request_id": request_id, "label": int(label)},
                       headers=headers(key), timeout=timeout)
    return resp.status_code


def sample_request(url: str, key: str, deployment: Optional[str] = None) -> Tuple[int, dict]:
    """One real scoring request with a blank-but-valid image (needs no dataset at hand)."""
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 6:22, 13:15] = 255  # a "1"
    with httpx.Client() as client:
        try:
            return score(client, url, key, image, deployment)
        except httpx.HTTPError as err:
            return 0, {"error": str(err)}


def write_sample_png(image: np.ndarray, path: Path) -> Path:
    from PIL import Image

    Image.fromarray(image.astype(np.uint8)).save(path)
    return path
