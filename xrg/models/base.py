"""What every runnable model shares: it owns its config and its checkpoint.

A runnable model (XRayGAN and its ablations, each Table-1 baseline, the VCN, the evaluation
finding classifier) has one model-config dataclass, ``config``, holding the fields that
decide its architecture (derived from a run config by the config's ``from_run_config``).
:meth:`CheckpointedModel.save` writes the weights with that model config, the run config,
the vocabulary and any further contents through :mod:`xrg.checkpoint`;
:meth:`CheckpointedModel.from_checkpoint` rebuilds the model from the stored model config
alone and loads the weights, refusing weights that do not fit it (as diffusers'
``from_pretrained`` and nanoGPT's ``GPT(GPTConfig(**checkpoint["model_args"]))`` do). What a
loaded model was read from (path, vocabulary, run config, progress, metrics) is kept in
:attr:`CheckpointedModel.checkpoint_info`. Code that only generates or evaluates needs these
classes, never :mod:`xrg.train`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from xrg.checkpoint import (
    checkpoint_model_config,
    checkpoint_vocabulary,
    load_checkpoint,
    require_finished,
    save_checkpoint,
)
from xrg.data.reports import Vocabulary
from xrg.errors import CheckpointError


@torch.no_grad()
def moving_average_step(
    average: nn.Module, current: nn.Module, batch_images: int, images_seen: float, half_life_images: float,
    rampup: float | None,
) -> float:  # fmt: skip
    """Move the weights of ``average`` towards those of ``current`` after a step that showed ``batch_images``
    images, ``images_seen`` in all; buffers (BatchNorm statistics) are copied. Returns the weight of the old average.

    The weight is ``0.5 ** (batch_images / half_life)`` (stylegan2-ada's ``ema_kimg``), with the half-life
    ramped up as ``min(half_life, rampup · images_seen)`` so that a short run's average is not its
    initialisation. PGGAN's generator and DiffuseVAE's UNet keep their moving averages with it.
    """
    half_life = half_life_images if rampup is None else min(half_life_images, images_seen * rampup)
    beta = 0.5 ** (batch_images / max(half_life, 1e-8))
    for old, new in zip(average.parameters(), current.parameters(), strict=True):
        old.copy_(new.detach().lerp(old, beta))
    for old, new in zip(average.buffers(), current.buffers(), strict=True):
        old.copy_(new)
    return beta


@dataclass
class CheckpointInfo:
    """What a model was loaded from: the file, its vocabulary, its run config (plain values) and its records."""

    path: Path
    kind: str
    vocabulary: Vocabulary
    run_config: dict[str, Any]
    progress: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    xrg_version: str = ""

    @property
    def finished(self) -> bool:
        """Whether the training that wrote it had finished (checkpoints without the mark count as finished)."""
        return self.progress.get("finished", True) is not False


class CheckpointedModel(nn.Module):
    """Mixin of the runnable models: ``config``, :meth:`save` and :meth:`from_checkpoint`.

    A subclass sets ``kind`` (the checkpoint kind), ``config_class`` (its model-config
    dataclass) and, where a stopped training's state must never pass for a trained model,
    ``unfinished_hint`` (how to finish it); it is built as ``cls(config)``. It may override
    :meth:`checkpoint_state` and :meth:`load_checkpoint_state` (the default: the whole
    ``state_dict``) and :meth:`for_inference` (what a loaded model is put into).
    """

    kind: ClassVar[str]
    config_class: ClassVar[type]
    unfinished_hint: ClassVar[str | None] = None
    config: Any
    checkpoint_info: CheckpointInfo | None = None

    # ---- weights in and out ----------------------------------------------------------------

    def checkpoint_state(self) -> Any:
        """The tensors :meth:`save` stores under ``state``."""
        return self.state_dict()

    def load_checkpoint_state(self, state: Any) -> None:
        """Load what :meth:`checkpoint_state` stored; raises KeyError/RuntimeError/TypeError when it does not fit."""
        self.load_state_dict(state)

    @classmethod
    def build_for_loading(cls, config: Any) -> CheckpointedModel:
        """The untrained model a checkpoint's weights are loaded into (``cls(config)`` by default)."""
        return cls(config)

    @classmethod
    def mismatch_message(cls, path: Path, config: Any, error: BaseException) -> str:
        """Why weights that do not fit the model of ``config`` are refused."""
        return f"checkpoint {path} does not match the model its config describes: {error}"

    def for_inference(self) -> CheckpointedModel:
        """The loaded model as generation and evaluation use it (eval mode by default)."""
        return self.eval()

    # ---- checkpoints -------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, *, run_config: Any, vocabulary: Vocabulary, **contents: Any) -> Path:
        """Write the weights, the model config, ``run_config``, ``vocabulary`` and ``contents`` to ``path``."""
        return save_checkpoint(
            path, self.kind, run_config, vocabulary, model_config=self.config, state=self.checkpoint_state(), **contents
        )

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
        """The model of checkpoint ``path``, rebuilt from its stored model config, on ``map_location``.

        Every refusal of :func:`xrg.checkpoint.load_checkpoint` applies; so does a model
        config that does not build, and weights that do not fit the model it describes.
        """
        payload = load_checkpoint(path, cls.kind, map_location=map_location)
        return cls.from_payload(payload, path).to(map_location)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], path: str | os.PathLike) -> Any:
        """The model of an already loaded and checked checkpoint ``payload`` (read from ``path``), on the CPU."""
        path = Path(path)
        if cls.unfinished_hint is not None:
            require_finished(payload, path, cls.unfinished_hint)
        config = checkpoint_model_config(payload, cls.config_class, path)
        vocabulary = checkpoint_vocabulary(payload, path)
        vocab_size = getattr(config, "vocab_size", None)
        if vocab_size is not None and vocab_size != len(vocabulary):
            raise CheckpointError(
                f"checkpoint {path} does not match the model its config describes: its vocabulary has "
                f"{len(vocabulary)} words, the model reads {vocab_size}"
            )
        model = cls.build_for_loading(config)
        try:
            model.load_checkpoint_state(payload["state"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise CheckpointError(cls.mismatch_message(path, config, exc)) from exc
        model.checkpoint_info = CheckpointInfo(
            path=path,
            kind=cls.kind,
            vocabulary=vocabulary,
            run_config=dict(payload["config"]),
            progress=dict(payload.get("progress") or {}),
            metrics=dict(payload.get("metrics") or {}),
            xrg_version=str(payload.get("xrg_version")),
        )
        return model.for_inference()


class ConditionalGANModel(CheckpointedModel):
    """A report-conditioned GAN (XRayGAN and the Table-1 baselines): an ``encoder``, a ``generator``
    and, when built for training, ``discriminators``; the checkpoint keeps the three apart, and
    a model built for loading has no discriminators."""

    @classmethod
    def build_for_loading(cls, config: Any) -> ConditionalGANModel:
        return cls(config, with_discriminators=False)

    def checkpoint_state(self) -> dict[str, Any]:
        state = {"encoder": self.encoder.state_dict(), "generator": self.generator.state_dict()}
        if hasattr(self, "discriminators"):
            state["discriminators"] = self.discriminators.state_dict()
        return state

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.generator.load_state_dict(state["generator"])
        if hasattr(self, "discriminators"):
            self.discriminators.load_state_dict(state["discriminators"])
