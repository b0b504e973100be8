"""Latent class optimisation: gradient search in PGGAN's latent space for an image of a chosen finding.

The dissertation's Algorithm 1 (§3.4): draw ``z`` from the prior truncated at 0.7 (every
component beyond ±0.7 redrawn); while the search classifier's logit of class ``c`` on ``G(z)``
is below the class threshold ``T_c``, take a gradient step on ``L = −logit_c(G(z))`` with the
generator (its moving average) and the classifier frozen. The other classes' logits are free;
they are recorded at every step, as are ``z`` and the image, so that a search can be plotted.

What this module adds to the algorithm, and why:

* **a step budget** (``max_steps``): a search that does not pass the threshold within it is
  returned with ``success = False`` — the dissertation saw DenseNet searches plateau, and a
  failure is a result, never hidden or retried silently;
* **severity**: ``target`` is a probability the class must reach instead of the classifier's
  own threshold (its logit ``log(p / (1 − p))``), so "more severe" is a higher target;
* **staying on the prior** (``regulariser``): a latent pushed far from the prior can draw an
  adversarial pattern that only the search classifier believes. ``"norm"`` adds
  ``prior_weight · ‖z‖² / 2`` to the loss (the negative log-density of the prior, up to a
  constant); ``"truncate"`` projects ``z`` back into the truncated prior's box ``[−t, t]``
  after every step; ``"none"`` is Algorithm 1 as written. Whether an image is believed by an
  independent evaluator is measured elsewhere (the book's confirmed rate);
* **batches**: ``n`` searches run side by side, each stopping when it passes (its latent is
  then frozen), so one search's progress never changes another's result.

:func:`patient_series` draws small perturbations around a found latent — the same patient,
slightly moved — and reports which still show the class and how every other logit moved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from xrg.errors import ConfigError
from xrg.models.pggan import truncated_normal

#: The dissertation's truncation of the initial latent (Brock et al.'s truncation trick).
TRUNCATION = 0.7
REGULARISERS = ("none", "norm", "truncate")


class SearchClassifier:
    """A frozen multi-label classifier as the search sees it: generated images in [-1, 1] → logits.

    ``network`` maps images ``[B, 1, input_size, input_size]`` in [0, 1] to logits ``[B, C]``;
    generated images are resized to ``input_size`` by area averaging (differentiable), which is
    the bottleneck the dissertation blamed for the DenseNet searches' failures.
    ``thresholds`` are the per-class logit thresholds (the validation Youden J's, for the trained
    classifiers); ``class_names`` name the columns.
    """

    def __init__(
        self,
        network: Callable[[torch.Tensor], torch.Tensor],
        class_names: Sequence[str],
        thresholds: Sequence[float] | torch.Tensor,
        input_size: int,
    ) -> None:
        self.network = network
        self.class_names = tuple(class_names)
        self.thresholds = torch.as_tensor(thresholds, dtype=torch.float32).flatten()
        if len(self.thresholds) != len(self.class_names):
            raise ConfigError(
                f"{len(self.class_names)} class names but {len(self.thresholds)} thresholds: one threshold per class"
            )
        if not torch.isfinite(self.thresholds).all():
            raise ConfigError(f"thresholds must be finite logits, got {self.thresholds.tolist()}")
        self.input_size = int(input_size)
        if isinstance(network, torch.nn.Module):
            network.eval().requires_grad_(False)

    def class_index(self, name: str) -> int:
        """The column of class ``name``; an unknown name is refused with the list of classes."""
        if name not in self.class_names:
            raise ConfigError(f"unknown class {name!r}; the classes are: {', '.join(self.class_names)}")
        return self.class_names.index(name)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` of generated images ``[B, 1, H, W]`` in [-1, 1]."""
        x = (images + 1.0) / 2.0
        if x.shape[-1] != self.input_size:
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="area" if x.shape[-1] > self.input_size else "bilinear"
            )
        return self.network(x)

    def threshold_for(self, index: int, target: float | None) -> float:
        """The logit a search must reach: the class threshold, or the logit of probability ``target``."""
        if target is None:
            return float(self.thresholds[index])
        if not 0.0 < target < 1.0:
            raise ConfigError(f"target must be a probability in (0, 1), got {target}")
        return math.log(target / (1.0 - target))


@dataclass
class SearchResult:
    """One search: whether it passed, after how many steps, and its trajectory.

    ``zs [T + 1, d]``, ``logits [T + 1, C]`` and (when recorded) ``images [T + 1, 1, H, W]`` hold
    step 0 (the initial latent) to step ``T = steps``; ``z``, ``image`` and ``final_logits`` are the last.
    """

    class_name: str
    success: bool
    steps: int
    threshold: float
    zs: torch.Tensor
    logits: torch.Tensor
    images: torch.Tensor | None
    class_names: tuple[str, ...] = field(default_factory=tuple)

    @property
    def z(self) -> torch.Tensor:
        return self.zs[-1]

    @property
    def final_logits(self) -> torch.Tensor:
        return self.logits[-1]

    @property
    def target_logit(self) -> float:
        return float(self.logits[-1, self.class_names.index(self.class_name)])

    @property
    def image(self) -> torch.Tensor | None:
        return None if self.images is None else self.images[-1]


def search(
    generate: Callable[[torch.Tensor], torch.Tensor],
    latent_dim: int,
    classifier: SearchClassifier,
    class_name: str,
    *,
    n: int = 1,
    seed: int = 0,
    z: torch.Tensor | None = None,
    truncation: float | None = TRUNCATION,
    target: float | None = None,
    max_steps: int = 200,
    lr: float = 0.05,
    regulariser: str = "none",
    prior_weight: float = 0.01,
    record_images: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[SearchResult]:
    """Algorithm 1 for ``n`` latents (seeded by ``seed``, or the given ``z [n, d]``); see the module docstring.

    ``generate`` maps latents ``[B, d]`` to images ``[B, 1, H, W]`` in [-1, 1] with gradients
    (the frozen moving-average generator). Steps are plain gradient descent with step size
    ``lr``, as the algorithm writes them. ``progress(step, active)`` is called after every step.
    """
    index = classifier.class_index(class_name)
    threshold = classifier.threshold_for(index, target)
    if regulariser not in REGULARISERS:
        raise ConfigError(f"regulariser must be one of {REGULARISERS}, got {regulariser!r}")
    if max_steps < 0 or lr <= 0 or n < 1 or prior_weight < 0:
        raise ConfigError(
            f"need max_steps >= 0, lr > 0, n >= 1 and prior_weight >= 0, got {max_steps}, {lr}, {n}, {prior_weight}"
        )
    if regulariser == "truncate" and truncation is None:
        raise ConfigError("regulariser 'truncate' projects onto the truncated prior: give a truncation threshold")
    if z is None:
        z = truncated_normal((n, latent_dim), truncation, torch.Generator().manual_seed(seed))
    elif z.ndim != 2 or z.shape[1] != latent_dim:
        raise ConfigError(f"z must be [n, {latent_dim}], got {tuple(z.shape)}")
    z = z.detach().clone().float()
    n = z.shape[0]
    active = torch.ones(n, dtype=torch.bool)
    stop_step = torch.full((n,), max_steps, dtype=torch.long)
    zs, all_logits, images = [], [], []
    for step in range(max_steps + 1):
        z.requires_grad_(True)
        image = generate(z)
        logits = classifier.logits(image)
        zs.append(z.detach().clone())
        all_logits.append(logits.detach().clone())
        if record_images:
            images.append(image.detach().clone())
        passed = logits.detach()[:, index] >= threshold
        newly = active & passed
        stop_step[newly] = step
        active = active & ~passed
        if not active.any() or step == max_steps:
            break
        loss = -(logits[:, index] * active).sum()
        if regulariser == "norm":
            loss = loss + prior_weight * 0.5 * (z.pow(2).sum(dim=1) * active).sum()
        (gradient,) = torch.autograd.grad(loss, z)
        with torch.no_grad():
            z = z - lr * gradient * active.unsqueeze(1)
            if regulariser == "truncate":
                z = z.clamp(-truncation, truncation)
        if progress is not None:
            progress(step + 1, int(active.sum()))
    z_steps, logit_steps = torch.stack(zs), torch.stack(all_logits)
    image_steps = torch.stack(images) if record_images else None
    results = []
    for i in range(n):
        end = int(stop_step[i])
        results.append(
            SearchResult(
                class_name=class_name,
                success=not bool(active[i]),
                steps=end,
                threshold=threshold,
                zs=z_steps[: end + 1, i],
                logits=logit_steps[: end + 1, i],
                images=None if image_steps is None else image_steps[: end + 1, i],
                class_names=classifier.class_names,
            )  # fmt: skip
        )
    return results


@dataclass
class PatientSeries:
    """Perturbations ``zs [K, d]`` of one latent, their ``images`` and ``logits [K, C]``, and which
    still reach the class threshold (``kept``)."""

    class_name: str
    threshold: float
    zs: torch.Tensor
    images: torch.Tensor
    logits: torch.Tensor
    kept: torch.Tensor
    class_names: tuple[str, ...] = field(default_factory=tuple)


@torch.no_grad()
def patient_series(
    generate: Callable[[torch.Tensor], torch.Tensor],
    classifier: SearchClassifier,
    z: torch.Tensor,
    class_name: str,
    *,
    count: int = 8,
    sigma: float = 0.1,
    seed: int = 0,
    target: float | None = None,
) -> PatientSeries:
    """``count`` latents ``z + sigma · ε`` (ε seeded) around a found ``z [d]``: the same patient, slightly moved."""
    index = classifier.class_index(class_name)
    threshold = classifier.threshold_for(index, target)
    if count < 1 or sigma < 0:
        raise ConfigError(f"need count >= 1 and sigma >= 0, got {count}, {sigma}")
    noise = torch.randn((count, z.shape[-1]), generator=torch.Generator().manual_seed(seed))
    zs = z.detach().reshape(1, -1).float() + sigma * noise
    images = generate(zs)
    logits = classifier.logits(images)
    return PatientSeries(
        class_name, threshold, zs, images, logits, logits[:, index] >= threshold, classifier.class_names
    )
