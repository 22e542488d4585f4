"""A managed deployment whose container does not start fails `stage=deploy`/`stage=cd` with the error
that stopped it, read from the container's log (what `get_logs` returns), not only with Azure's
"Operation returned an invalid status". The log here is azmlinfsrv 1.5.1's own, as the Azure
stand-in's online host (tests/azure_online_host.py) captured it for an inference environment
without onnxruntime; the integration test that produced it is in test_azure_steps_as_processes."""

from __future__ import annotations

import pytest

from conftest import needs_module

needs_module("azure.ai.ml", "pip install -e '.[azure]'")

from mnistops.backends.azure.managed_endpoint import container_says  # noqa: E402

AZMLINFSRV_LOG = """\
2026-12-06 18:33:20,234 I [6815] azmlinfsrv.user_script - Invoking user's init function
2026-12-06 18:33:20,235 E [6815] azmlinfsrv - User's init function failed
2026-12-06 18:33:20,235 E [6815] azmlinfsrv - Encountered Exception Traceback (most recent call last):
  File "/var/azureml-app/code/mnistops/serving/deployments.py", line 59, in __init__
    import onnxruntime as ort
ModuleNotFoundError: No module named 'onnxruntime'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File ".../azureml_inference_server_http/server/user_script.py", line 121, in invoke_init
    raise UserScriptException(ex) from ex
azureml_inference_server_http.server.user_script.UserScriptException: Caught an unhandled exception from the user script

2026-12-06 18:33:20,236 I [6815] gunicorn.error - Worker exiting (pid: 6815)
2026-12-06 18:33:20,537 E [6814] gunicorn.error - Reason: Worker failed to boot.
"""
COMMAND = "az ml online-deployment get-logs -n blue -e mnist-qa --lines 200"


def test_the_root_cause_of_the_containers_last_exception_is_named():
    said = container_says(AZMLINFSRV_LOG, COMMAND)
    assert said == f"\n  the container says: ModuleNotFoundError: No module named 'onnxruntime'\n  (its log: {COMMAND})"


def test_a_later_unchained_exception_is_the_one_named():
    later = AZMLINFSRV_LOG + "Traceback (most recent call last):\n  File \"score.py\"\nValueError: bad model\n"
    assert "the container says: ValueError: bad model" in container_says(later, COMMAND)


@pytest.mark.parametrize("log, shown", [
    ("", ""), (None, ""),
    ("booting\nlistening on 5001\n", "\n  the container's last lines:\nbooting\nlistening on 5001\n  (its log: "),
])
def test_without_an_exception_the_last_lines_or_nothing(log, shown):
    said = container_says(log, COMMAND)
    assert said.startswith(shown) and (said == "" if not shown else said.endswith(f"{COMMAND})"))
