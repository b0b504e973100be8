"""Crash-safe runs: SIGKILL at chosen and random points, SIGINT/SIGTERM, divergence, a full disk.

* SIGKILL: a training process is killed before a step, after a step's update, halfway through
  writing a checkpoint, or between an epoch's metrics row and its checkpoint (one kind per
  seed, the count drawn from the seed), twice in a row, and after a random delay. After each
  kill the run directory holds either no checkpoint or one that loads — never a partial file
  under the final name — and resuming to the end gives bit-identical weights and identical
  metrics to an uninterrupted run (CPU, one thread).
* SIGINT (forkserver child running the command line) and SIGTERM (a real ``python -m xrg.cli``
  process) stop after the current step with a checkpoint, exit with status 130 and print the
  command that resumes; that command works.
* A diverging run names the step, the losses and the last good checkpoint, which loads.
* A full disk (``write`` or ``fsync`` failing with ENOSPC) while writing a checkpoint, the
  manifest, the vocabulary, an image or a metrics line keeps the previous file and says so;
  the run then resumes to the same weights.
"""

from __future__ import annotations

import errno
import io as stdlib_io
import json
import multiprocessing
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import xrg.io
from xrg.checkpoint import load_checkpoint
from xrg.cli import main
from xrg.data.images import save_png
from xrg.data.manifest import MANIFEST_NAME, read_manifest, write_manifest
from xrg.data.reports import Vocabulary
from xrg.errors import DiskFullError, XrgError
from xrg.io import append_jsonl
from xrg.paths import claim_output_dir
from xrg.train.xraygan import XRayGANTrainer

from ._helpers import TINY, TOTAL_STEPS, write_synthetic_data
from ._train_child import PAUSE_EVENTS, cli_child, train_child

ROOT = Path(__file__).resolve().parents[2]
#: Checkpoints a fresh TINY run writes, in order, by step: the start, then each epoch end and
#: each phase end (pretrain 1 epoch, stage 0 2 epochs, stage 1 1 epoch).
SAVE_STEPS = (0, 3, 3, 6, 9, 9, 12, 12)
#: How many of each pause event a fresh run passes.
EVENT_COUNTS = {"before_step": TOTAL_STEPS, "after_step": TOTAL_STEPS, "mid_save": len(SAVE_STEPS), "after_metrics": 4}
KILL_SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_synthetic_data(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir) -> Path:
    """The uninterrupted run every interrupted one must match."""
    run = tmp_path_factory.mktemp("straight") / "run"
    result = XRayGANTrainer(TINY, data_dir, run, progress=False).train()
    assert result.finished and result.step == TOTAL_STEPS
    return run


@pytest.fixture(scope="module")
def forkserver():
    """A forkserver that has imported torch and xrg once; its children start at once."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["robustness._train_child"])
    return context


def run_child(context, target, args, kill_after: float | None = None, signal_at_step=None, timeout=180):
    """Start ``target(conn, *args)``; SIGKILL it when it pauses or ``kill_after`` s after its first step.

    ``signal_at_step=(n, signum)`` sends ``signum`` once step ``n`` is reported instead.
    Returns ``(what happened, messages, exit code)``.
    """
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(sender, *args))
    process.start()
    sender.close()
    messages, happened, first_step = [], "ran to the end", None
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert time.monotonic() < deadline, f"child did not finish in {timeout} s: {messages}"
            if receiver.poll(0.005):
                try:
                    message = receiver.recv()
                except EOFError:
                    break
                messages.append(message)
                assert message[0] != "error", message[1]
                if message[0] == "paused":
                    process.kill()
                    happened = f"killed at {message[1]} {message[2]}"
                    break
                if message[0] == "step":
                    first_step = first_step or time.monotonic()
                    if signal_at_step and message[1] == signal_at_step[0]:
                        os.kill(process.pid, signal_at_step[1])
                        happened = f"signalled after step {message[1]}"
                if message[0] in ("done", "exit"):
                    break
            elif not process.is_alive():
                break
            if kill_after is not None and first_step and time.monotonic() - first_step >= kill_after:
                process.kill()
                happened = f"killed {kill_after:.2f} s after the first step"
                break
    finally:
        process.join(60)
        if process.is_alive():
            process.kill()
            process.join()
    return happened, messages, process.exitcode


def checkpoint_step(run: Path) -> int | None:
    """The step of ``run``'s checkpoint, or None when there is none; a checkpoint that exists must load."""
    path = run / "checkpoint.pt"
    if not path.exists():
        return None
    return int(load_checkpoint(path, "xraygan", config=TINY)["progress"]["step"])


def check_after_kill(run: Path, steps_done: int) -> list[Path]:
    """Nothing partial under a final name; returns the temporary leftovers."""
    step = checkpoint_step(run)
    assert step is None or (step in SAVE_STEPS and step <= steps_done), (step, steps_done)
    leftovers = []
    for path in run.rglob("*"):
        if path.is_dir():
            continue
        name = path.relative_to(run).as_posix()
        if path.name.endswith(".tmp"):
            assert path.name.startswith("."), name  # atomic_write's temporary names only
            leftovers.append(path)
            continue
        assert name in ("checkpoint.pt", "metrics.jsonl", ".xrg.lock") or name.startswith("samples/"), name
        if name == "metrics.jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)
        elif name.startswith("samples/"):
            from xrg.data.images import load_grayscale

            load_grayscale(path)  # a sample grid that exists is complete
    return leftovers


def resume_to_end(data_dir: Path, run: Path) -> XRayGANTrainer:
    resume = (run / "checkpoint.pt").exists()
    trainer = XRayGANTrainer(TINY, data_dir, run, progress=False, resume=resume)
    result = trainer.train()
    assert result.finished and result.step == TOTAL_STEPS
    assert not [p for p in run.rglob("*.tmp")], "resume left the killed run's temporary files"
    return trainer


def without_timing(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in rows]


def assert_same_run(run: Path, straight: Path) -> None:
    expected = load_checkpoint(straight / "checkpoint.pt", "xraygan")
    actual = load_checkpoint(run / "checkpoint.pt", "xraygan")
    compared = 0
    for part, state in expected["state"].items():
        assert state.keys() == actual["state"][part].keys()
        for name, tensor in state.items():
            assert torch.equal(tensor, actual["state"][part][name]), f"{part}.{name} differs"
            compared += 1
    assert compared > 50
    assert torch.equal(expected["rng"]["torch"], actual["rng"]["torch"])
    assert without_timing(run) == without_timing(straight)  # no epoch row lost or doubled
    for name in ("pretrain_16px.png", "stage0_16px.png", "stage1_32px.png"):
        assert (run / "samples" / name).read_bytes() == (straight / "samples" / name).read_bytes()


# --------------------------------------------------------------------------------------
# SIGKILL
# --------------------------------------------------------------------------------------


def kill_point(seed: int) -> tuple[str, int]:
    event = PAUSE_EVENTS[seed % len(PAUSE_EVENTS)]
    return event, random.Random(seed).randint(1, EVENT_COUNTS[event])


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, forkserver, data_dir, straight, seed):
    run = tmp_path / "run"
    pause = kill_point(seed)
    happened, messages, code = run_child(forkserver, train_child, (str(data_dir), str(run), False, pause, 0.0))
    assert happened == f"killed at {pause[0]} {pause[1]}" and code == -signal.SIGKILL, (happened, code)
    steps_done = sum(m[0] == "step" for m in messages)
    leftovers = check_after_kill(run, steps_done)
    if pause[0] == "mid_save":
        assert len(leftovers) == 1 and leftovers[0].name.startswith(".checkpoint.pt.")
        assert checkpoint_step(run) == (SAVE_STEPS[pause[1] - 2] if pause[1] > 1 else None)  # the previous one
    trainer = resume_to_end(data_dir, run)
    if leftovers:
        assert any("partial file" in note for note in trainer.notes), trainer.notes
    assert_same_run(run, straight)


def test_two_kills_in_a_row_then_resume(tmp_path, forkserver, data_dir, straight):
    run = tmp_path / "run"
    rng = random.Random(4)
    first = ("after_step", rng.randint(1, 6))
    second = ("after_metrics", 1)  # the resumed process's first epoch end
    happened, _, _ = run_child(forkserver, train_child, (str(data_dir), str(run), False, first, 0.0))
    assert happened.startswith("killed at after_step")
    happened, _, code = run_child(forkserver, train_child, (str(data_dir), str(run), True, second, 0.0))
    assert happened.startswith("killed at after_metrics") and code == -signal.SIGKILL
    check_after_kill(run, TOTAL_STEPS)
    resume_to_end(data_dir, run)
    assert_same_run(run, straight)


def test_sigkill_after_a_random_delay_then_resume(tmp_path, forkserver, data_dir, straight):
    run = tmp_path / "run"
    delay = random.Random(5).uniform(0.05, 0.6)  # 12 steps of at least 0.06 s each
    happened, messages, code = run_child(
        forkserver, train_child, (str(data_dir), str(run), False, None, 0.06), kill_after=delay
    )
    steps_done = sum(m[0] == "step" for m in messages)
    check_after_kill(run, steps_done)
    resume_to_end(data_dir, run)
    assert_same_run(run, straight)


# --------------------------------------------------------------------------------------
# SIGINT, SIGTERM
# --------------------------------------------------------------------------------------

CLI_SETTINGS = ["--set", "vc_weight=0", "--set", "num_samples=0", "--set", "batch_size=[4, 4]"]


def test_sigint_saves_exits_130_and_prints_a_working_resume_command(tmp_path, forkserver, data_dir):
    run = tmp_path / "run with space"
    output = tmp_path / "output.txt"
    argv = ["train", "xraygan", "--profile", "tiny", "--data", str(data_dir), "--out", str(run), "--quiet",
            *CLI_SETTINGS, "--set", "num_epochs=[2, 1]", "--set", "pretrain_epochs=1"]  # fmt: skip
    happened, messages, code = run_child(
        forkserver, cli_child, (argv, str(output), 0.3), signal_at_step=(2, signal.SIGINT)
    )
    printed = output.read_text()
    assert happened == "signalled after step 2" and code == 130, (happened, code, printed)
    steps = [m[1] for m in messages if m[0] == "step"]
    stopped = steps[-1]
    assert stopped in (2, 3)  # the step running when the signal came is finished, no more
    assert f"stopped (SIGINT) after step {stopped}; checkpoint saved to {run / 'checkpoint.pt'}" in printed
    assert checkpoint_step_of(run) == stopped
    command = printed.split("resume with: ", 1)[1].splitlines()[0]
    words = shlex.split(command)
    assert words[:3] == ["xrg", "train", "xraygan"] and words[-1] == "--resume" and str(run) in words
    assert "batch_size=[4, 4]" in words  # quoted so that a shell keeps it one word
    assert main([*words[1:], "--quiet"]) == 0  # the printed command finishes the run


def checkpoint_step_of(run: Path) -> int:
    return int(load_checkpoint(run / "checkpoint.pt", "xraygan")["progress"]["step"])


def test_sigterm_on_the_real_command_line(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "xrg.cli", "train", "xraygan", "--profile", "tiny", "--data", str(data_dir),
               "--out", str(run), "--quiet", *CLI_SETTINGS, "--set", "num_epochs=[50, 50]"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").is_file():  # an epoch is done: training is under way
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        printed, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, printed
    assert "stopped (SIGTERM) after step" in printed
    stopped = int(printed.split("stopped (SIGTERM) after step ")[1].split(";")[0])
    assert checkpoint_step_of(run) == stopped
    words = shlex.split(printed.split("resume with: ", 1)[1].splitlines()[0])
    assert "num_epochs=[50, 50]" in words and words[-1] == "--resume"
    capsys.readouterr()
    assert main([*words[1:], "--quiet", "--max-steps", str(stopped + 2)]) == 0
    assert f"stopped (max_steps) after step {stopped + 2}" in capsys.readouterr().out


# --------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------


def test_a_diverging_run_names_the_step_the_losses_and_the_last_good_checkpoint(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    argv = ["train", "xraygan", "--profile", "tiny", "--data", str(data_dir), "--out", str(run), "--quiet",
            *CLI_SETTINGS, "--set", "lr=[1e30, 1e30]", "--set", "pretrain_epochs=0"]  # fmt: skip
    assert main(argv) == 2
    message = capsys.readouterr().err
    assert message.startswith("xrg: error: training diverged at step "), message
    step = int(message.split("diverged at step ")[1].split()[0])
    assert "non-finite" in message and all(f"{loss}=" in message for loss in ("d_loss", "gp"))
    kept = f"{run / 'checkpoint.pt'} (step "
    assert kept in message
    good = int(message.split(kept)[1].split(")")[0])
    assert good < step and checkpoint_step_of(run) == good
    payload = load_checkpoint(run / "checkpoint.pt", "xraygan")
    assert all(
        torch.isfinite(t).all() for state in payload["state"].values() for t in state.values() if t.is_floating_point()
    )


# --------------------------------------------------------------------------------------
# A full disk
# --------------------------------------------------------------------------------------


class FullDisk:
    """Patch ``os.fdopen`` (or ``os.fsync``) as seen by xrg.io so that writing fails with ENOSPC.

    ``room`` bytes are written before the disk is full; ``calls`` counts write attempts, and
    only the ``fail_on``-th atomic write (1-based) and later ones fail.
    """

    def __init__(self, monkeypatch, mode: str = "write", room: int = 100, fail_on: int = 1) -> None:
        self.room, self.fail_on, self.opened = room, fail_on, 0
        real_fdopen, real_fsync = os.fdopen, os.fsync
        disk = self

        class Handle:
            def __init__(self, handle) -> None:
                self.handle, self.written = handle, 0

            def write(self, data) -> int:
                if self.written + len(data) > disk.room:
                    self.handle.write(bytes(data[: max(disk.room - self.written, 0)]))
                    raise OSError(errno.ENOSPC, "No space left on device")
                self.written += len(data)
                return self.handle.write(data)

            def __getattr__(self, name):
                return getattr(self.handle, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc_info):
                return self.handle.__exit__(*exc_info)

        def fdopen(fd, *args, **kwargs):
            disk.opened += 1
            handle = real_fdopen(fd, *args, **kwargs)
            return Handle(handle) if mode == "write" and disk.opened >= disk.fail_on else handle

        def fsync(fd):
            if mode == "fsync" and disk.opened >= disk.fail_on:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_fsync(fd)

        monkeypatch.setattr(xrg.io.os, "fdopen", fdopen)
        monkeypatch.setattr(xrg.io.os, "fsync", fsync)


def assert_kept(error: BaseException, path: Path) -> None:
    message = str(error)
    assert isinstance(error, DiskFullError) and isinstance(error, OSError) and isinstance(error, XrgError)
    assert error.errno == errno.ENOSPC
    assert "disk full while writing" in message and str(path) in message and "is kept unchanged" in message, message
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")], "a temporary file was left behind"


@pytest.mark.parametrize("mode", ["write", "fsync"])
def test_a_full_disk_keeps_the_previous_dataset_files(tmp_path, monkeypatch, mode):
    data = write_synthetic_data(tmp_path / "data", num_patients=5)
    files = {name: (data / name).read_bytes() for name in (MANIFEST_NAME, "vocab.json", "images/case000_frontal.png")}
    cases = read_manifest(data)
    with monkeypatch.context() as patch:
        FullDisk(patch, mode, room=16)
        with pytest.raises(DiskFullError) as caught:
            write_manifest(data, cases[:2])
        assert_kept(caught.value, data / MANIFEST_NAME)
        with pytest.raises(DiskFullError) as caught:
            Vocabulary.build(["other words"]).save(data / "vocab.json")
        assert_kept(caught.value, data / "vocab.json")
        with pytest.raises(DiskFullError) as caught:
            save_png(data / "images" / "case000_frontal.png", np.zeros((32, 32), np.float32))
        assert_kept(caught.value, data / "images" / "case000_frontal.png")
        with pytest.raises(DiskFullError, match="nothing was written to"):
            save_png(data / "images" / "new.png", np.zeros((32, 32), np.float32))
    assert {name: (data / name).read_bytes() for name in files} == files
    assert [case.id for case in read_manifest(data, check_images=True)] == [case.id for case in cases]
    assert not (data / "images" / "new.png").exists()


def test_a_full_disk_while_appending_metrics_keeps_the_earlier_lines(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1})

    class FullFile(stdlib_io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open = open

    def full_open(file, mode="r", *args, **kwargs):
        return FullFile() if mode == "a" else real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(DiskFullError, match=r"disk full while appending to .*metrics.jsonl.*earlier lines are kept"):
        append_jsonl(path, {"step": 2})
    monkeypatch.undo()
    assert path.read_text() == '{"step": 1}\n'


def test_a_full_disk_during_a_checkpoint_keeps_the_last_one_and_the_run_resumes_exactly(
    tmp_path, monkeypatch, data_dir, straight
):
    run = tmp_path / "run"
    assert XRayGANTrainer(TINY, data_dir, run, progress=False).train(max_steps=4).step == 4
    kept = (run / "checkpoint.pt").read_bytes()
    with monkeypatch.context() as patch:
        FullDisk(patch, "write", room=10_000)  # the 16 kB sample grids fit, the checkpoint does not
        with pytest.raises(DiskFullError) as caught:
            XRayGANTrainer(TINY, data_dir, run, progress=False, resume=True).train()
    assert_kept(caught.value, run / "checkpoint.pt")
    assert (run / "checkpoint.pt").read_bytes() == kept
    assert checkpoint_step(run) == 4
    resume_to_end(data_dir, run)  # the epoch whose checkpoint failed is redone, its metrics row once
    assert_same_run(run, straight)


def test_the_command_line_says_the_disk_is_full_and_how_to_resume(tmp_path, monkeypatch, data_dir, capsys):
    run = tmp_path / "run"
    argv = [
        "train",
        "xraygan",
        "--profile",
        "tiny",
        "--data",
        str(data_dir),
        "--out",
        str(run),
        "--quiet",
        *CLI_SETTINGS,
    ]
    claim_output_dir(run, "run")  # its marker was written while there was room: the checkpoint is the first write now
    FullDisk(monkeypatch, "fsync")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "disk full while writing" in err and f"nothing was written to {run / 'checkpoint.pt'}" in err
    assert "resume with: xrg train xraygan" in err
