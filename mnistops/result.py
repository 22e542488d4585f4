"""What a stage (or a backend acting for it) returns: references for the steps after it and the user."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass
class StageResult:
    stage: str
    run_id: Optional[str] = None
    metrics: Dict[str, float] = field(default_factory=dict)
    artifacts: Dict[str, str] = field(default_factory=dict)  # name -> local path or URI
    outputs: Dict[str, Any] = field(default_factory=dict)  # config keys for the steps after this one
    model_uri: Optional[str] = None
    score: Optional[float] = None  # what a sweep optimises
    endpoint_url: Optional[str] = None  # stages that act on an endpoint: its base URL
