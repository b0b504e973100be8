"""Pieces every training loop here shares: seeded epoch batches, learning rates, stop requests,
BatchNorm recalibration.

Batches are drawn from a seeded ``torch.Generator`` whose state at the start of an epoch is
stored in checkpoints, so a resumed run re-draws the same permutation and skips the batches
it had already done. SIGINT and SIGTERM, while a loop runs, only ask it to stop after the
current step, which then writes a checkpoint; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

import torch
from torch import nn

from xrg.errors import ConfigError


def epoch_batches(num_items: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch: a permutation of ``range(num_items)`` drawn from ``generator``, in full batches.

    The incomplete last batch is dropped (BatchNorm needs at least two samples); a split
    smaller than ``batch_size`` gives one batch of all of it.
    """
    if num_items < 2:
        raise ConfigError(f"training needs at least 2 cases, got {num_items}")
    batch_size = min(batch_size, num_items)
    order = torch.randperm(num_items, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, num_items - batch_size + 1, batch_size)]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class StopRequests:
    """Context manager turning SIGINT/SIGTERM into a ``requested`` flag for a training loop.

    Outside the main thread (where handlers cannot be installed) it does nothing. The
    previous handlers come back on exit, and already after the first signal, so a second
    Ctrl-C interrupts at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signal.Signals(signum).name
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._restore()


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, run_batches: Callable[[], Iterable[Any]]) -> int:
    """Recompute the running statistics of every BatchNorm layer in ``module`` exactly.

    BatchNorm's running averages (momentum 0.1) lag behind weights that change quickly, so a
    generator in eval mode can draw quite different images from the ones it was trained to
    make (measured on the cpu run: VC 0.46 in eval mode, 0.74 with batch statistics). Here the
    statistics are reset and re-accumulated as a plain average (``momentum=None``) over the
    forward passes ``run_batches`` makes, in train mode and without gradients; the momentum and
    the train/eval mode are restored afterwards. Training itself never reads these buffers, so
    this changes what eval mode produces and nothing else. Returns the number of layers.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    was_training = module.training
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    module.train()
    try:
        for _ in run_batches():
            pass
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        module.train(was_training)
    return len(norms)
