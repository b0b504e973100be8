"""One interface over every trained report-to-X-ray model, for the evaluation (Tables 1 and 2).

XRayGAN, its ablations and the baselines (GAN-INT-CLS, StackGAN, AttnGAN) are trained by
different trainers and stored as different checkpoint kinds; :func:`load_generator` reads a
run directory and returns a :class:`PairGenerator` that turns a :func:`collate_pairs`-style
batch of encoded reports into both views in [0, 1], seeded by a ``torch.Generator`` (only a
model with a noise input uses it). :func:`encode_reports` builds such a batch from raw
report texts, for edited reports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from xrg.checkpoint import CHECKPOINT_NAME, read_checkpoint
from xrg.data.manifest import VIEWS
from xrg.data.reports import Vocabulary, encode_section, pad_sections, split_report_text
from xrg.errors import CheckpointError, ConfigError
from xrg.models.baselines import BaselineModel
from xrg.models.xraygan import XRayGAN, to_image_range


class PairGenerator(Protocol):
    """What the evaluation needs of a trained model (or of a control, :mod:`xrg.eval.controls`).

    ``takes_noise`` says whether ``generate`` reads its ``torch.Generator``: only then do
    different seeds give different images (the diversity metrics need it).
    """

    method: str
    image_size: int
    vocabulary: Vocabulary
    max_sentences: int
    max_words: int
    #: Whether ``generate`` draws from its ``torch.Generator`` (noise, CA samples): seeds change its images.
    takes_noise: bool

    def generate(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]: ...


def checkpoint_path(run: str | os.PathLike) -> Path:
    """``RUN/checkpoint.pt`` for a run directory, or the file itself."""
    path = Path(run)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"{run} holds no trained model ({path} does not exist)")
    return path


def checkpoint_kind(path: str | os.PathLike) -> str:
    """The ``kind`` a checkpoint was saved as (``xraygan``, ``baseline`` ...), read safely."""
    payload = read_checkpoint(path)  # refuses damage, foreign pickles and unverifiable files, naming why
    if "kind" not in payload:
        raise CheckpointError(f"{path} is not an xrg checkpoint")
    return str(payload["kind"])


@dataclass
class _LoadedPairGenerator:
    """What every adapter of a model loaded by ``from_checkpoint`` reads from that model and its checkpoint."""

    model: Any

    @property
    def path(self) -> Path:
        return self.model.checkpoint_info.path

    @property
    def vocabulary(self) -> Vocabulary:
        return self.model.checkpoint_info.vocabulary

    @property
    def max_sentences(self) -> int:
        return self.model.config.max_sentences

    @property
    def max_words(self) -> int:
        return self.model.config.max_words


@dataclass
class XRayGANPairGenerator(_LoadedPairGenerator):
    """An XRayGAN run (full model or an ablation) behind the :class:`PairGenerator` interface.

    ``model`` is a loaded :class:`~xrg.models.xraygan.XRayGAN` (it knows its checkpoint).
    """

    model: XRayGAN

    @property
    def method(self) -> str:
        return xraygan_method(self.model.checkpoint_info.run_config)

    @property
    def image_size(self) -> int:
        return self.model.config.final_size

    @property
    def takes_noise(self) -> bool:
        return self.model.config.noise_dim > 0

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
        self.model.eval()
        c = self.model.encode(batch).c
        noise = None
        if self.model.config.noise_dim:
            noise = torch.randn(c.shape[0], self.model.config.noise_dim, generator=generator).to(c.device)
        images = self.model.generate(c, self.model.config.num_stages - 1, noise)
        return {view: to_image_range(images[view]).clamp(0, 1).cpu() for view in VIEWS}


@dataclass
class BaselinePairGenerator(_LoadedPairGenerator):
    """A trained Table-1 baseline behind the :class:`PairGenerator` interface.

    ``model`` is a loaded :class:`~xrg.models.baselines.BaselineModel` (it knows its checkpoint).
    """

    model: BaselineModel

    @property
    def method(self) -> str:
        return self.model.config.method

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def takes_noise(self) -> bool:
        """Noise ``z`` (every baseline with ``noise_dim > 0``) or a CA sample ĉ (StackGAN, AttnGAN)."""
        return self.model.config.noise_dim > 0 or self.model.config.method != "gan_int_cls"

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Both views at the final size in [0, 1] on the CPU; noise and CA samples come from ``generator``."""
        self.model.eval()
        images = self.model.generator(self.model.encode(batch), generator).images[-1]
        return {view: to_image_range(images[view]).clamp(0, 1).cpu() for view in VIEWS}


def xraygan_method(run_config: Mapping[str, Any]) -> str:
    """The row name of an XRayGAN run config (plain values): ``xraygan`` or the ablation it is."""
    removed = []
    model = run_config.get("model")
    model = model if isinstance(model, Mapping) else {}
    if run_config.get("vc_weight") == 0:
        removed.append("vcn")
    if model.get("generator_kind") == "single_shot":
        removed.append("mscgan")
    if model.get("encoder_kind") == "flat":
        removed.append("hae")
    name = "xraygan" + "".join(f"_no_{part}" for part in removed)
    if run_config.get("rec_target") == "canonical":  # the improved objective (issue 15)
        return "xraygan_improved" if not removed else name + "_canonical"
    return name


def load_generator(run: str | os.PathLike, device: str | torch.device = "cpu") -> PairGenerator:
    """The trained model of a run directory (or checkpoint file), whatever trained it."""
    path = checkpoint_path(run)
    kind = checkpoint_kind(path)
    if kind == "xraygan":
        return XRayGANPairGenerator(XRayGAN.from_checkpoint(path, map_location=device))
    if kind == "baseline":
        return BaselinePairGenerator(BaselineModel.from_checkpoint(path, map_location=device))
    raise CheckpointError(f"checkpoint {path} is a {kind!r} checkpoint, not a report-to-X-ray model")


def encode_reports(
    texts: Sequence[str],
    vocabulary: Vocabulary,
    max_sentences: int,
    max_words: int,
    case_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A batch (the id/mask keys of :func:`collate_pairs`, and ``report_text``) from raw report texts.

    ``case_ids``, when given, names the dataset case each text was written for (an edited
    report keeps its case): the batch then carries ``case_id`` too, so a control that draws
    into a case's patient (:class:`xrg.eval.controls.PhantomControl`) can find it.
    """
    if case_ids is not None and len(case_ids) != len(texts):
        raise ConfigError(f"case_ids has {len(case_ids)} ids for {len(texts)} report texts")
    findings, impressions = [], []
    for text in texts:
        findings_text, impression_text = split_report_text(text)
        findings.append(encode_section(findings_text, vocabulary, max_sentences, max_words))
        impressions.append(encode_section(impression_text, vocabulary, max_sentences, max_words))
    findings_ids, findings_mask = pad_sections(findings)
    impression_ids, impression_mask = pad_sections(impressions)
    return {
        "findings_ids": findings_ids,
        "findings_mask": findings_mask,
        "impression_ids": impression_ids,
        "impression_mask": impression_mask,
        "report_text": list(texts),
        **({"case_id": list(case_ids)} if case_ids is not None else {}),
    }
