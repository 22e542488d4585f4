"""stage=train: one-batch trainings of every model, what the MLflow run holds, seeded
reproducibility, resume after a kill, DDP on two CPU processes, and clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CONF, REPO, TINY, compose, mirror_url, mlflow_client, run_cli, runs_of
from mnistops.errors import MnistopsError
from mnistops.stages import run_stage

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


@pytest.mark.integration
@pytest.mark.parametrize("model", MODELS)
def test_one_batch_training_of_every_model(model, home):
    cfg = compose(["stage=train", f"model={model}", *TINY], home)
    result = run_stage(cfg)
    assert result.run_id and 0.0 <= result.metrics["val/acc"] <= 1.0
    assert Path(result.artifacts["checkpoint"]).is_file()


@pytest.mark.integration
def test_train_run_holds_config_metrics_checkpoint_and_digest(home):
    cfg = compose(["stage=train", "model=logreg", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
                   "trainer.limit_val_batches=1"], home)
    result = run_stage(cfg)
    client = mlflow_client(home)
    run = client.get_run(result.run_id)
    assert run.data.params["model.name"] == "logreg" and run.data.params["trainer.max_epochs"] == "2"
    assert run.data.params["data.mirrors"].startswith("[")
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2
    assert len(client.get_metric_history(run.info.run_id, "train/loss_epoch")) == 2
    assert run.data.tags["mnistops.dataset_digest"] == "d526d270f61bd965"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["mnist-train"]
    assert any(a.path.endswith(".ckpt") for a in client.list_artifacts(run.info.run_id, "checkpoints"))
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml", "checkpoints"}
    assert run.info.status == "FINISHED"
    assert result.score == pytest.approx(run.data.metrics["val/acc"])


@pytest.mark.integration
def test_same_seed_same_result(home):
    overrides = ["stage=train", *TINY, "trainer.limit_train_batches=3", "seed=7"]
    first = run_stage(compose(overrides, home)).metrics
    second = run_stage(compose(overrides, home)).metrics
    assert first["val/loss"] == second["val/loss"] and first["train/loss_epoch"] == second["train/loss_epoch"]
    third = run_stage(compose(overrides[:-1] + ["seed=8"], home)).metrics
    assert third["val/loss"] != first["val/loss"]


def test_the_epoch_line_says_metrics_time_and_eta():
    from mnistops.models.epoch_log import epoch_line

    metrics = {"train/loss": 0.573, "train/acc": 0.98781, "val/loss": 0.1176, "val/acc": 0.9936, "lr": 1e-3}
    assert epoch_line(3, 6, metrics, 570.0, 3) == ("epoch 3/6  train/loss 0.5730  train/acc 0.9878  val/loss 0.1176  "
                                                   "val/acc 0.9936  9:30 elapsed, ETA 9:30 (3:10/epoch, 0.0053 epochs/s)")
    # resumed at epoch 10: the rate counts the epochs of this fit only
    assert epoch_line(12, 12, {"val/acc": 0.5}, 4.0, 2).endswith("0:04 elapsed, ETA 0:00 (2.0s/epoch, 0.5 epochs/s)")
    assert "ETA" not in epoch_line(2, -1, {}, 10.0, 2)  # no max_epochs: no end to estimate


@pytest.mark.integration
def test_a_log_file_gets_a_line_per_epoch_and_each_message_once(home):
    """stdout and stderr to files, as in CI: no progress bar, one line per epoch, nothing twice, no adverts."""
    proc = run_cli(["stage=train", "model=logreg", "trainer.max_epochs=3", "trainer.limit_train_batches=3",
                    "trainer.limit_val_batches=1"], home, check=True)
    out = proc.stdout + proc.stderr
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"], out
    assert all("val/acc" in line and "elapsed" in line and "epochs/s" in line for line in epochs)
    assert out.count("GPU available") == 1 and "INFO:" not in out, out
    assert "Tip" not in out and "litlogger" not in out
    assert "it/s" not in out  # no progress bar drawn into a file


def test_gpu_without_cuda_is_a_clear_error(home):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(MnistopsError, match="compute=gpu asks for a GPU"):
        run_stage(compose(["stage=train", "compute=gpu", *TINY], home))


def test_bad_net_argument_names_the_model_key(home):
    with pytest.raises(MnistopsError, match="model.net cannot be built.*chanels"):
        run_stage(compose(["stage=train", "+model.net.chanels=3", *TINY], home))


def test_resume_without_an_unfinished_run_is_refused(home):
    with pytest.raises(MnistopsError, match="no unfinished train run"):
        run_stage(compose(["stage=train", "train.resume=true", *TINY], home))


@pytest.mark.integration
def test_resume_continues_a_killed_run_from_its_last_checkpoint(home):
    args = ["stage=train", "model=logreg", "trainer.max_epochs=12", "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=1", "data.batch_size=32"]
    env = {**os.environ, "MNISTOPS_HOME": str(home), "MNISTOPS_DATA_MIRROR": mirror_url()}
    proc = subprocess.Popen([sys.executable, "-m", "mnistops", *args, "+trainer.max_time=null"], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    last = None
    while time.time() < deadline and proc.poll() is None:
        found = list((home / "dev" / "outputs").glob("*/*/checkpoints/last.ckpt"))
        if found:
            last = found[0]
            break
        time.sleep(0.05)
    assert last is not None, "no checkpoint appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    client = mlflow_client(home)
    (killed,) = runs_of(client, "train")
    assert killed.info.status == "RUNNING"
    epochs_before = len(client.get_metric_history(killed.info.run_id, "val/acc"))
    assert epochs_before < 12

    import torch

    resumed_from = torch.load(last, map_location="cpu", weights_only=False)["epoch"]  # the last finished epoch
    run_cli([*args, "train.resume=true"], home, check=True)
    (resumed,) = runs_of(client, "train")
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    # The metric history tells where the resumed fit started: each val/acc is logged at the end of
    # an epoch, with the "epoch" metric at the same step. A fit restarted from epoch 0 would log the
    # epochs up to the checkpoint's again; resumed, each of them is there once, and the steps go on.
    epoch_at = {m.step: int(m.value) for m in client.get_metric_history(resumed.info.run_id, "epoch")}
    val = sorted(client.get_metric_history(resumed.info.run_id, "val/acc"), key=lambda m: m.timestamp)
    epochs = [epoch_at[m.step] for m in val]
    assert sorted(set(epochs)) == list(range(12)), epochs
    for epoch in range(resumed_from + 1):
        assert epochs.count(epoch) == 1, f"epoch {epoch} (before the checkpoint) ran again: {epochs}"
    before = [m.step for m in val if epoch_at[m.step] <= resumed_from]
    after = [m.step for m in val if epoch_at[m.step] > resumed_from]
    assert min(after) > max(before), "the resumed fit's global steps start over"


@pytest.mark.integration
def test_resume_keyword_is_rejected_as_unknown_key(home):
    proc = run_cli(["stage=train", "train.resum=true", "--cfg", "job"], home, timeout=60)
    assert proc.returncode != 0 and "resum" in proc.stderr


@pytest.mark.integration
def test_ddp_cpu_trains_with_two_processes_into_one_run_and_one_dir(home):
    run_cli(["stage=train", "compute=ddp_cpu", *TINY], home, check=True, timeout=600)
    client = mlflow_client(home)
    (run,) = runs_of(client, "train")
    assert run.data.tags["mnistops.world_size"] == "2"
    assert run.info.status == "FINISHED"
    assert "val/acc" in run.data.metrics
    outputs = list((home / "dev" / "outputs").glob("*/*"))
    assert len(outputs) == 1 and (outputs[0] / "checkpoints").is_dir()
