"""Training processes that :mod:`test_runs` kills or signals (run from a forkserver child).

The forkserver preloads this module, so torch and xrg are imported once and every child
starts in milliseconds. A child reports over a pipe: ``("step", n)`` after each optimizer
step, ``("paused", event, n)`` when it reached the point it was asked to stop at (it then
sleeps until killed), ``("done", step)`` or ``("error", traceback)``. :func:`vcn_cli_child`
runs ``xrg train vcn`` and reports its VCN steps the same way (for :mod:`test_resume_small`).

Pause points (``pause=(event, n)``), counted within the child:

* ``before_step``: before the n-th step function call (nothing of that step done);
* ``after_step``: after the n-th step's optimizer update, before the trainer counts it;
* ``mid_save``: halfway through writing the n-th ``checkpoint.pt`` (half the bytes are in the
  temporary file, flushed to disk);
* ``after_metrics``: after the n-th epoch's metrics row is appended, before its checkpoint.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

import torch

import xrg.checkpoint
import xrg.cli
import xrg.io
import xrg.train.loop
import xrg.train.vcn
import xrg.train.xraygan
from xrg.train.xraygan import XRayGANTrainer

from ._helpers import TINY

PAUSE_EVENTS = ("before_step", "after_step", "mid_save", "after_metrics")


def _install_hooks(conn: Connection, pause: tuple[str, int] | None, step_sleep: float) -> None:
    counts: collections.Counter[str] = collections.Counter()

    def hit(event: str) -> None:
        counts[event] += 1
        if pause == (event, counts[event]):
            conn.send(("paused", event, counts[event]))
            time.sleep(600)  # until the test kills this process

    def wrap(step_function):
        def step(*args, **kwargs):
            hit("before_step")
            losses = step_function(*args, **kwargs)
            hit("after_step")
            conn.send(("step", counts["after_step"]))
            if step_sleep:
                time.sleep(step_sleep)
            return losses

        return step

    xraygan = xrg.train.xraygan
    xraygan.pretrain_step = wrap(xraygan.pretrain_step)
    xraygan.gan_step = wrap(xraygan.gan_step)

    write_bytes = xrg.checkpoint.atomic_write_bytes

    def checkpoint_write(path, data):
        if Path(path).name == xraygan.CHECKPOINT_NAME:
            counts["mid_save"] += 1
            if pause == ("mid_save", counts["mid_save"]):

                def half_then_wait(handle):
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    os.fsync(handle.fileno())
                    conn.send(("paused", "mid_save", counts["mid_save"]))
                    time.sleep(600)

                return xrg.io.atomic_write(path, half_then_wait)
        return write_bytes(path, data)

    xrg.checkpoint.atomic_write_bytes = checkpoint_write
    loop = xrg.train.loop  # the shared training loop appends the metric rows
    append = loop.append_jsonl

    def metrics_append(path, row):
        append(path, row)
        hit("after_metrics")

    loop.append_jsonl = metrics_append


def train_child(
    conn: Connection, data_dir: str, run_dir: str, resume: bool, pause: tuple[str, int] | None, step_sleep: float
) -> None:
    """Train :data:`TINY` in ``run_dir`` (resuming when asked) with the pause hooks installed."""
    try:
        torch.set_num_threads(1)
        _install_hooks(conn, pause, step_sleep)
        result = XRayGANTrainer(TINY, data_dir, run_dir, progress=False, resume=resume).train()
        conn.send(("done", result.step))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise


def cli_child(conn: Connection, argv: list[str], output: str, step_sleep: float) -> None:
    """Run ``xrg <argv>`` with the step hooks; stdout and stderr go to ``output``; exit with its status."""
    _run_cli(conn, argv, output, lambda: _install_hooks(conn, None, step_sleep))


def _run_cli(conn: Connection, argv: list[str], output: str, install) -> None:
    """``install()`` the step hooks, run ``xrg <argv>`` into ``output``, report and exit with its status."""
    try:
        torch.set_num_threads(1)
        install()
        with (
            open(output, "w", encoding="utf-8") as sink,
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            status = xrg.cli.main(argv)
        conn.send(("exit", status))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    sys.exit(status)


def vcn_cli_child(conn: Connection, argv: list[str], output: str, step_sleep: float) -> None:
    """Run ``xrg <argv>`` reporting ``("step", n)`` after each VCN step; exit with its status."""

    def install() -> None:
        vcn_step, count = xrg.train.vcn.vcn_step, [0]

        def step(*args, **kwargs):
            result = vcn_step(*args, **kwargs)
            count[0] += 1
            conn.send(("step", count[0]))
            time.sleep(step_sleep)
            return result

        xrg.train.vcn.vcn_step = step

    _run_cli(conn, argv, output, install)
