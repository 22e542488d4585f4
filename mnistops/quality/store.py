"""Where an env keeps its quality baselines: the Great Expectations suite (versioned by dataset
digest, plus `current.json` naming the one in force) and the model-quality baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig

from mnistops.atomic import write_atomic


def quality_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.home) / cfg.env.name / "quality"


def write_json(path: Path, data: Dict[str, Any]) -> Path:
    return write_atomic(path, json.dumps(data, indent=2))


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else None


def suite_path(cfg: DictConfig, version: str) -> Path:
    return quality_dir(cfg) / "suites" / f"{version}.json"


def current_suite_path(cfg: DictConfig) -> Optional[Path]:
    current = read_json(quality_dir(cfg) / "current.json")
    return Path(current["suite"]) if current else None


def model_baseline_path(cfg: DictConfig) -> Path:
    return quality_dir(cfg) / "model_baseline.json"
