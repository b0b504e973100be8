"""Stop and resume of the offline networks: the VCNs and the evaluation classifier.

* ``xrg train vcn`` in a forkserver child gets SIGTERM at a step: it exits with status 130,
  names the partial state it saved and prints the command that resumes; no file appears under
  the final name; the printed command finishes the training, and the weights, the metric rows
  and the test metrics equal those of an uninterrupted run (CPU, one thread).
* :func:`train_vcn` stopped in-process (SIGTERM sent to the test process from inside a step,
  at an epoch's last step), then crashed while saving at the epoch end and in the next epoch's
  first step, and the evaluation classifier stopped mid-epoch, both resume to the weights and
  metric rows of an uninterrupted run; the message names the call that resumes.
* A partial state is never taken for a trained model (:func:`load_vcn`, :func:`load_classifier`),
  and one written with other settings is refused with what to do.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shlex
import signal
import time
from pathlib import Path

import pytest
import torch

import xrg.train.evaluators
import xrg.train.loop
import xrg.train.vcn
from helpers import stop_at
from xrg.checkpoint import load_checkpoint
from xrg.cli import main
from xrg.errors import CheckpointError, TrainingStopped
from xrg.eval.evaluators import CLASSIFIER_NAME, ClassifierTrainConfig, load_classifier
from xrg.profiles import load_profile
from xrg.train.evaluators import train_classifier
from xrg.train.loop import partial_path
from xrg.train.vcn import VCNTrainConfig, load_vcn, train_vcn, vcn_path

from ._helpers import TRAIN_CASES, write_synthetic_data
from ._train_child import vcn_cli_child

SIZE = 16
VCN_SETTINGS = {"num_epochs": 2, "batch_size": 4}
VCN_STEPS = 2 * (TRAIN_CASES // 4)
CLASSIFIER = ClassifierTrainConfig(image_size=32, num_epochs=2, batch_size=4, seed=3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_synthetic_data(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def vcn_config() -> VCNTrainConfig:
    """What ``xrg train vcn --profile tiny --sizes 16 --set ...`` trains."""
    return VCNTrainConfig.from_profile(load_profile("tiny"), SIZE, dict(VCN_SETTINGS))


@pytest.fixture(scope="module")
def straight_vcn(tmp_path_factory, data_dir, vcn_config) -> Path:
    run = tmp_path_factory.mktemp("straight-vcn")
    result = train_vcn(data_dir, vcn_config, run, progress=False)
    assert load_checkpoint(result.path, "vcn")["step"] == VCN_STEPS
    return run


@pytest.fixture(scope="module")
def straight_classifier(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("straight-classifier")
    train_classifier(data_dir, CLASSIFIER, out, progress=False)
    return out


def assert_same_weights(actual: Path, expected: Path, kind: str) -> None:
    got, want = load_checkpoint(actual, kind), load_checkpoint(expected, kind)
    assert got["state"].keys() == want["state"].keys() and len(want["state"]) > 50
    for name, tensor in want["state"].items():
        assert torch.equal(tensor, got["state"][name]), f"{name} differs"
    assert got["metrics"] == want["metrics"] and got["step"] == want["step"]
    assert got["progress"]["finished"] is True


def rows(path: Path) -> list[dict]:
    untimed = ("seconds", "images_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in untimed} for line in path.read_text().splitlines()]


def assert_nothing_final(directory: Path, final: Path) -> None:
    """After a stop: the partial state and metrics only, nothing under the final name, no temporary file."""
    assert not final.exists(), f"{final} written by a stopped training"
    assert partial_path(final).is_file()
    assert not list(directory.rglob("*.tmp"))


# --------------------------------------------------------------------------------------
# VCN
# --------------------------------------------------------------------------------------


def run_cli_child(argv: list[str], output: Path, signal_at_step: int, timeout: float = 120) -> tuple[list, int | None]:
    """Run ``xrg <argv>`` in a forkserver child; SIGTERM it once it reports step ``signal_at_step``."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["robustness._train_child"])
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=vcn_cli_child, args=(sender, argv, str(output), 0.2))
    process.start()
    sender.close()
    messages, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not receiver.poll(0.01):
                if not process.is_alive():
                    break
                continue
            try:
                message = receiver.recv()
            except EOFError:
                break
            messages.append(message)
            assert message[0] != "error", message[1]
            if message == ("step", signal_at_step):
                os.kill(process.pid, signal.SIGTERM)
            if message[0] == "exit":
                break
        else:
            raise AssertionError(f"child did not finish in {timeout} s: {messages}")
    finally:
        process.join(60)
        if process.is_alive():
            process.kill()
            process.join()
    return messages, process.exitcode


def test_sigterm_stops_xrg_train_vcn_which_prints_a_command_that_resumes_exactly(
    tmp_path, data_dir, vcn_config, straight_vcn
):
    run = tmp_path / "run dir"
    argv = ["train", "vcn", "--profile", "tiny", "--data", str(data_dir), "--out", str(run), "--sizes", str(SIZE),
            "--quiet", *(w for k, v in VCN_SETTINGS.items() for w in ("--set", f"{k}={v}"))]  # fmt: skip
    output = tmp_path / "output.txt"
    messages, code = run_cli_child(argv, output, signal_at_step=2)
    printed = output.read_text()
    assert code == 130, (code, printed)
    stopped = [m[1] for m in messages if m[0] == "step"][-1]
    assert stopped in (2, 3), messages  # the step running when the signal came is finished, no more
    final, partial = vcn_path(run, SIZE), partial_path(vcn_path(run, SIZE))
    assert partial.name == f"vcn_{SIZE}.partial.pt"
    assert_nothing_final(run, final)
    assert f"VCN {SIZE}px training stopped (SIGTERM) after step {stopped} of {VCN_STEPS}" in printed, printed
    assert f"its state is saved in {partial}" in printed and "To resume, call xrg.train.vcn.train_vcn(" in printed
    assert load_checkpoint(partial, "vcn")["progress"] == {"epoch": stopped // 3, "batch": stopped % 3,
                                                           "step": stopped, "finished": False}  # fmt: skip
    with pytest.raises(CheckpointError, match="holds a training stopped at step .*not a trained model"):
        load_vcn(partial)
    words = shlex.split(printed.split("resume with: ", 1)[1].splitlines()[0])
    assert words == ["xrg", *argv]  # the same command: it resumes by itself
    assert main(words[1:]) == 0  # through ensure_vcns: the partial state is resumed, not loaded
    assert not partial.exists() and not list(run.rglob("*.tmp"))
    assert_same_weights(final, vcn_path(straight_vcn, SIZE), "vcn")
    assert rows(run / "vcn" / "metrics.jsonl") == rows(straight_vcn / "vcn" / "metrics.jsonl")


def test_train_vcn_stopped_then_crashed_twice_resumes_exactly(
    tmp_path, monkeypatch, data_dir, vcn_config, straight_vcn
):
    """SIGTERM at an epoch's last step; a crash while saving at the epoch end (its metrics row is
    then dropped and redone); a crash in the next epoch's first step (resumed from the epoch-end save)."""
    monkeypatch.setattr(xrg.train.loop, "PARTIAL_SAVE_SECONDS", 0.0)  # every epoch end saves too
    final, partial = vcn_path(tmp_path, SIZE), partial_path(vcn_path(tmp_path, SIZE))
    with monkeypatch.context() as patch:
        calls = stop_at(patch, xrg.train.vcn, "vcn_step", {3})  # the last step of epoch 0
        with pytest.raises(TrainingStopped) as caught:
            train_vcn(data_dir, vcn_config, tmp_path, progress=False)
    stop = caught.value
    assert len(calls) == 3 and stop.signal == "SIGTERM" and stop.step == 3 and stop.checkpoint == partial
    assert "train_vcn(" in stop.resume and repr(vcn_config) in str(stop) and str(tmp_path) in str(stop)
    assert_nothing_final(tmp_path, final)

    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(xrg.train.loop.EpochLoop, "save", crash)
        with pytest.raises(RuntimeError, match="killed"):
            train_vcn(data_dir, vcn_config, tmp_path, progress=False)
    assert [row["epoch"] for row in rows(tmp_path / "vcn" / "metrics.jsonl")] == [0]  # ahead of the saved state
    with monkeypatch.context() as patch:
        patch.setattr(xrg.train.vcn, "vcn_step", crash)
        with pytest.raises(RuntimeError, match="killed"):
            train_vcn(data_dir, vcn_config, tmp_path, progress=False)
    assert load_checkpoint(partial, "vcn")["progress"] == {"epoch": 1, "batch": 0, "step": 3, "finished": False}
    assert_nothing_final(tmp_path, final)
    train_vcn(data_dir, vcn_config, tmp_path, progress=False)
    assert not partial.exists()
    assert_same_weights(final, vcn_path(straight_vcn, SIZE), "vcn")
    assert rows(tmp_path / "vcn" / "metrics.jsonl") == rows(straight_vcn / "vcn" / "metrics.jsonl")  # epoch 0 once


def test_a_partial_vcn_state_of_other_settings_is_refused_with_what_to_do(tmp_path, monkeypatch, data_dir, vcn_config):
    with monkeypatch.context() as patch:
        stop_at(patch, xrg.train.vcn, "vcn_step", {1})
        with pytest.raises(TrainingStopped):
            train_vcn(data_dir, vcn_config, tmp_path, progress=False)
    other = dataclasses.replace(vcn_config, lr=0.5)
    with pytest.raises(CheckpointError, match=r"lr: 0.01 → 0.5.*delete it to start over"):
        train_vcn(data_dir, other, tmp_path, progress=False)
    assert partial_path(vcn_path(tmp_path, SIZE)).is_file()  # kept for the settings it belongs to


# --------------------------------------------------------------------------------------
# The evaluation classifier
# --------------------------------------------------------------------------------------


def test_the_evaluation_classifier_stopped_by_sigterm_resumes_exactly(
    tmp_path, monkeypatch, data_dir, straight_classifier
):
    final = tmp_path / CLASSIFIER_NAME
    with monkeypatch.context() as patch:
        calls = stop_at(patch, xrg.train.evaluators, "weighted_bce", {2})
        with pytest.raises(TrainingStopped) as caught:
            train_classifier(data_dir, CLASSIFIER, tmp_path, progress=False)
    message = str(caught.value)
    assert len(calls) == 2 and caught.value.step == 2
    assert f"evaluation classifier 32px training stopped (SIGTERM) after step 2 of {VCN_STEPS}" in message
    assert f"saved in {partial_path(final)}" in message and "xrg.train.evaluators.train_classifier(" in message
    assert "ensure_evaluators()" in message
    assert_nothing_final(tmp_path, final)
    with pytest.raises(CheckpointError, match="not a trained model; call ensure_evaluators"):
        load_classifier(partial_path(final))
    train_classifier(data_dir, CLASSIFIER, tmp_path, progress=False)
    assert not partial_path(final).exists()
    assert_same_weights(final, straight_classifier / CLASSIFIER_NAME, "classifier")
    assert rows(tmp_path / "metrics.jsonl") == rows(straight_classifier / "metrics.jsonl")
    load_classifier(final, CLASSIFIER)
