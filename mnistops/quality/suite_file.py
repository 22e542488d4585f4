"""A suite on disk: JSON written atomically, read back with one clear error for a missing, corrupt
or foreign file."""

from __future__ import annotations

import json
from pathlib import Path

import great_expectations as gx

from mnistops.atomic import write_atomic
from mnistops.errors import MnistopsError
from mnistops.quality.expectations import suite_info


def save_suite(suite: gx.ExpectationSuite, path) -> Path:
    """Write the suite as JSON, atomically."""
    return write_atomic(path, json.dumps(suite.to_json_dict(), indent=1, sort_keys=False))


def load_suite(path) -> gx.ExpectationSuite:
    """Read a suite written by :func:`save_suite`; a missing, corrupt or foreign file is a
    :class:`MnistopsError` naming the file."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MnistopsError(f"expectation suite file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MnistopsError(f"expectation suite file {path} is not valid JSON: {e}") from None
    if not isinstance(d, dict) or not isinstance(d.get("expectations"), list) or not d.get("name"):
        raise MnistopsError(f"expectation suite file {path} has no name or no expectations list")
    suite = gx.ExpectationSuite(name=d["name"], expectations=d["expectations"], meta=d.get("meta"),
                                notes=d.get("notes"), suite_parameters=d.get("suite_parameters"),
                                id=d.get("id"))
    if len(suite.expectations) != len(d["expectations"]):  # GX drops invalid ones with a log line
        raise MnistopsError(f"expectation suite file {path}: {len(d['expectations']) - len(suite.expectations)} "
                            f"invalid expectation(s)")
    suite_info(suite)
    return suite
