"""The PGGAN latent explorer's UI-free core: directions, truncation, class search, patient series, undo.

A student picks a patient (a latent seed), moves it along the generator's main directions of
variation, asks for a finding (the class search of :mod:`xrg.latent.search`, at a chosen
severity) and sees, beside every image, the logits of the search classifier and of the
independent evaluator — so an image the search classifier believes and the evaluator does
not is visible as such. Every action makes a new :class:`LatentView`; :meth:`LatentExplorer.undo`
goes back one.

**Directions** (:func:`principal_directions`) are GANSpace's (Härkönen et al. 2020), which
used PGGAN too: sample latents, take the principal components of the generator's first
feature map (the 4² block), and map each component back to a latent direction by least
squares. The first directions change the picture most (in a chest: size, position, exposure,
posture); their order is fixed by the seed they were computed with.

The ipywidgets front end (``notebooks/07_pggan_latent``) drives this class; everything it
shows comes from here, so it is tested without a browser.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from xrg.errors import ConfigError
from xrg.latent.search import TRUNCATION, PatientSeries, SearchClassifier, SearchResult, patient_series, search
from xrg.models.pggan import PGGAN, leaky, pixel_norm, truncated_normal
from xrg.models.xraygan import to_image_range

#: Latents sampled to find the directions.
DIRECTION_SAMPLES = 2048


@torch.no_grad()
def principal_directions(model: PGGAN, count: int, seed: int = 0, samples: int = DIRECTION_SAMPLES) -> torch.Tensor:
    """``count`` unit latent directions ``[count, d]``, by how much of the first feature map's variance each explains.

    GANSpace: features ``h(z)`` of the 4² block for ``samples`` seeded latents, their principal
    components ``u_k``, and the latent direction whose least-squares image in feature space
    best follows each component's coordinates ``(h − mean) · u_k``.
    """
    latent_dim = model.config.latent_dim
    if not 1 <= count <= latent_dim:
        raise ConfigError(f"count must be in 1..{latent_dim} (the latent size), got {count}")
    z = torch.randn((samples, latent_dim), generator=torch.Generator().manual_seed(seed))
    generator = model.generator_ema
    first = model.config.channels(4)
    h = pixel_norm(leaky(generator.dense(pixel_norm(z.to(model.images_seen.device)))).reshape(samples, first, 4, 4))
    h = h.flatten(1).cpu().double()
    centred = h - h.mean(dim=0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    coordinates = centred @ vh[:count].T  # [samples, count]
    # latent direction w_k with z · w_k ≈ coordinate_k (least squares), normalised
    solution = torch.linalg.lstsq(z.double(), coordinates).solution  # [d, count]
    directions = (solution / solution.norm(dim=0, keepdim=True)).T.float()
    return directions


@dataclass
class LatentView:
    """What the explorer shows: the image (float32 ``(s, s)`` in [0, 1]), its latent, both
    classifiers' logits by class name, what made it (``action``), and seconds per part."""

    image: np.ndarray
    z: torch.Tensor
    seed: int
    truncation: float | None
    offsets: tuple[float, ...]
    search_logits: dict[str, float]
    evaluator_logits: dict[str, float] | None
    action: str
    timing: dict[str, float] = field(default_factory=dict)
    search: SearchResult | None = None
    series: PatientSeries | None = None

    @property
    def seconds(self) -> float:
        return self.timing.get("total", 0.0)

    def search_passes(self, classifier: SearchClassifier) -> dict[str, bool]:
        """Per class, whether the search classifier's logit reaches its threshold."""
        return {
            name: self.search_logits[name] >= float(t) for name, t in zip(classifier.class_names, classifier.thresholds)
        }


class LatentExplorer:
    """The explorer over a trained PGGAN, its search classifier and (optionally) the independent evaluator."""

    def __init__(
        self,
        model: PGGAN,
        search_classifier: SearchClassifier,
        evaluator: SearchClassifier | None = None,
        num_directions: int = 6,
        direction_seed: int = 0,
        search_steps: int = 100,
        search_lr: float = 0.05,
    ) -> None:
        self.model = model.for_inference()
        self.search_classifier = search_classifier
        self.evaluator = evaluator
        self.directions = principal_directions(self.model, num_directions, seed=direction_seed)
        self.search_steps, self.search_lr = search_steps, search_lr
        self.history: list[LatentView] = []
        self._base: torch.Tensor | None = None  # the latent the direction offsets are measured from

    @property
    def view(self) -> LatentView | None:
        return self.history[-1] if self.history else None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.search_classifier.class_names

    # ---- actions ----------------------------------------------------------------------------

    def new_patient(self, seed: int, truncation: float | None = TRUNCATION) -> LatentView:
        """The latent of ``seed`` under the prior truncated at ``truncation``; directions at 0; a new history."""
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        if truncation is not None and not 0 < truncation <= 4:
            raise ConfigError(f"truncation must be in (0, 4] or None, got {truncation}")
        z = truncated_normal((1, self.model.config.latent_dim), truncation, torch.Generator().manual_seed(seed))[0]
        self._base = z
        view = self._render(z, seed, truncation, (0.0,) * len(self.directions), f"patient {seed}")
        self.history = [view]
        return view

    def move(self, offsets: tuple[float, ...] | list[float]) -> LatentView:
        """The current patient moved by ``offsets[k]`` along direction ``k`` (from where the patient started)."""
        current = self._current()
        offsets = tuple(float(v) for v in offsets)
        if len(offsets) != len(self.directions) or not all(np.isfinite(offsets)):
            raise ConfigError(f"offsets must be {len(self.directions)} finite numbers, got {offsets}")
        z = self._base + torch.tensor(offsets) @ self.directions
        view = self._render(
            z, current.seed, current.truncation, offsets, "move " + ", ".join(f"{v:+.1f}" for v in offsets)
        )
        self.history.append(view)
        return view

    def find(
        self, class_name: str, severity: float | None = None, regulariser: str = "none",
        progress: Callable[[int, int], None] | None = None,
    ) -> LatentView:  # fmt: skip
        """Search from the current latent for ``class_name`` (at probability ``severity``, or the class threshold).

        The view shows where the search ended, whether or not it passed (``view.search.success``);
        the directions are then measured from there.
        """
        current = self._current()
        started = time.perf_counter()
        result = search(
            self.model.generate, self.model.config.latent_dim, self.search_classifier, class_name,
            z=current.z.unsqueeze(0), target=severity, max_steps=self.search_steps, lr=self.search_lr,
            regulariser=regulariser, truncation=current.truncation or TRUNCATION, progress=progress,
        )[0]  # fmt: skip
        seconds = time.perf_counter() - started
        self._base = result.z
        word = "found" if result.success else "not found"
        view = self._render(
            result.z, current.seed, current.truncation, (0.0,) * len(self.directions),
            f"{class_name} {word} in {result.steps} steps", search_result=result, extra={"search": seconds},
        )  # fmt: skip
        self.history.append(view)
        return view

    def series(self, class_name: str, count: int = 6, sigma: float = 0.1, seed: int = 0) -> LatentView:
        """A patient series around the current latent (:func:`~xrg.latent.search.patient_series`); the view keeps its image."""
        current = self._current()
        started = time.perf_counter()
        result = patient_series(self.model.generate, self.search_classifier, current.z, class_name, count=count,
                                sigma=sigma, seed=seed)  # fmt: skip
        view = LatentView(
            image=current.image, z=current.z, seed=current.seed, truncation=current.truncation, offsets=current.offsets,
            search_logits=current.search_logits, evaluator_logits=current.evaluator_logits,
            action=f"series of {count} around it ({int(result.kept.sum())} keep {class_name})",
            timing={"series": time.perf_counter() - started, "total": time.perf_counter() - started}, series=result,
        )  # fmt: skip
        self.history.append(view)
        return view

    def undo(self) -> LatentView:
        """Back to the previous view (the first one stays)."""
        if len(self.history) < 2:
            raise ConfigError("nothing to undo")
        self.history.pop()
        view = self.history[-1]
        self._base = view.z - torch.tensor(view.offsets) @ self.directions
        return view

    # ---- rendering --------------------------------------------------------------------------

    def _current(self) -> LatentView:
        if not self.history:
            raise ConfigError("pick a patient first (new_patient)")
        return self.history[-1]

    @torch.no_grad()
    def _render(
        self, z: torch.Tensor, seed: int, truncation: float | None, offsets: tuple[float, ...], action: str,
        search_result: SearchResult | None = None, extra: dict[str, float] | None = None,
    ) -> LatentView:  # fmt: skip
        started = time.perf_counter()
        image = self.model.generate(z.unsqueeze(0).to(self.model.images_seen.device))
        generated = time.perf_counter()
        search_logits = self.search_classifier.logits(image)[0].cpu()
        classified = time.perf_counter()
        evaluator_logits = None
        if self.evaluator is not None:
            values = self.evaluator.logits(image)[0].cpu()
            evaluator_logits = {name: float(v) for name, v in zip(self.evaluator.class_names, values)}
        judged = time.perf_counter()
        timing = {"generate": generated - started, "search_classifier": classified - generated,
                  "evaluator": judged - classified, **(extra or {})}  # fmt: skip
        timing["total"] = sum(timing.values())
        return LatentView(
            image=to_image_range(image)[0, 0].clamp(0, 1).cpu().numpy().astype(np.float32), z=z.detach().cpu().clone(),
            seed=seed, truncation=truncation, offsets=offsets,
            search_logits={name: float(v) for name, v in zip(self.class_names, search_logits)},
            evaluator_logits=evaluator_logits, action=action, timing=timing, search=search_result,
        )  # fmt: skip
