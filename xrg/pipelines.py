"""Generation pipelines: a trained checkpoint plus a report text in, a frontal/lateral pair out.

:class:`XRayGANPipeline` is kept apart from the modules (as diffusers keeps pipelines apart
from models): it rebuilds the report encoder and the generators of a run from the config and
vocabulary stored in its checkpoint (:mod:`xrg.train.checkpoint`), and turns raw report text
into the encoder's input the way the training data was encoded (XRayGAN §2.1: FINDINGS and
IMPRESSION, sentences, words)::

    pipe = XRayGANPipeline.from_checkpoint("runs/cpu")          # a run directory or a .pt file
    out = pipe("FINDINGS: Mild cardiomegaly. IMPRESSION: No acute disease.")
    out.images()["frontal"].save("frontal.png")

The output holds both views at the final resolution in [0, 1], the word and sentence
attention of the hierarchical encoder with the tokens they weigh (for plotting), the words
the vocabulary does not know (read as ``<unk>``) and any warnings (truncated report,
unfinished training run).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from xrg.data.images import save_png, to_uint8
from xrg.data.reports import (
    EncodedSection,
    Vocabulary,
    encode_section,
    pad_sections,
    split_report_text,
    split_sentences,
    tokenize,
)
from xrg.errors import CheckpointError, EmptyReportError
from xrg.models.encoder import SectionEncoding
from xrg.models.xraygan import to_image_range
from xrg.train.checkpoint import checkpoint_config, checkpoint_vocabulary, load_checkpoint
from xrg.train.xraygan import CHECKPOINT_NAME, XRayGAN, XRayGANTrainConfig

SECTIONS: tuple[str, str] = ("findings", "impression")


@dataclass
class SectionAttention:
    """One section's attention (§2.1): ``word_weights[i][j]`` weighs word ``sentences[i][j]``."""

    section: str
    sentences: list[list[str]]
    word_weights: list[list[float]]
    sentence_weights: list[float]


@dataclass
class XRayGANOutput:
    """One generated pair. ``frontal`` and ``lateral`` are ``[1, H, W]`` tensors in [0, 1]."""

    frontal: torch.Tensor
    lateral: torch.Tensor
    findings: str  # the section texts that were encoded
    impression: str
    attention: dict[str, SectionAttention] = field(default_factory=dict)  # empty for the flat encoder
    unknown_words: list[str] = field(default_factory=list)  # encoded as <unk>, in report order
    warnings: list[str] = field(default_factory=list)

    @property
    def num_unknown_words(self) -> int:
        return len(self.unknown_words)

    def images(self) -> dict[str, Image.Image]:
        """Both views as 8-bit greyscale PIL images, ``{"frontal": ..., "lateral": ...}``."""
        return {
            view: Image.fromarray(to_uint8(getattr(self, view)[0].numpy())) for view in ("frontal", "lateral")
        }


def _section_tokens(text: str, max_sentences: int, max_words: int) -> list[list[str]]:
    """The tokens :func:`encode_section` keeps, sentence by sentence."""
    sentences = [tokens for sentence in split_sentences(text) if (tokens := tokenize(sentence))]
    return [tokens[:max_words] for tokens in sentences[:max_sentences]]


def _attention(name: str, tokens: list[list[str]], encoding: SectionEncoding) -> SectionAttention:
    word_weights = encoding.word_weights[0].cpu()
    return SectionAttention(
        section=name,
        sentences=tokens,
        word_weights=[word_weights[i, : len(sentence)].tolist() for i, sentence in enumerate(tokens)],
        sentence_weights=encoding.sentence_weights[0, : len(tokens)].cpu().tolist(),
    )


class XRayGANPipeline:
    """Report text → frontal and lateral X-ray, with a trained XRayGAN (see the module docstring)."""

    def __init__(
        self,
        model: XRayGAN,
        config: XRayGANTrainConfig,
        vocabulary: Vocabulary,
        notes: list[str] | None = None,
    ) -> None:
        self.model = model.eval()
        self.config = config
        self.vocabulary = vocabulary
        self.notes = list(notes or [])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> int:
        return self.config.final_size

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "XRayGANPipeline":
        """Load the encoder and generators of an XRayGAN checkpoint (or of ``RUN/checkpoint.pt``)."""
        path = Path(path)
        if path.is_dir():
            if not (path / CHECKPOINT_NAME).is_file():
                raise CheckpointError(f"{path} is a directory without a {CHECKPOINT_NAME}; is it an XRayGAN run?")
            path = path / CHECKPOINT_NAME
        payload = load_checkpoint(path, "xraygan", map_location=device)
        config = checkpoint_config(payload, XRayGANTrainConfig, path)
        vocabulary = checkpoint_vocabulary(payload, path)
        model = XRayGAN(config, len(vocabulary), with_discriminators=False)
        try:
            model.encoder.load_state_dict(payload["state"]["encoder"])
            model.generator.load_state_dict(payload["state"]["generator"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {path} does not match the model its config describes: {exc}") from exc
        notes = []
        progress = payload.get("progress", {})
        if not progress.get("finished", False):
            notes.append(
                f"checkpoint {path} is from an unfinished training run (step {progress.get('step')}); "
                "the later stages may be untrained"
            )
        return cls(model.to(device), config, vocabulary, notes)

    @classmethod
    def from_config(
        cls, config: XRayGANTrainConfig, vocabulary: Vocabulary, seed: int = 0, device: str | torch.device = "cpu"
    ) -> "XRayGANPipeline":
        """An untrained pipeline with seeded random weights (for benchmarks and tests)."""
        torch.manual_seed(seed)
        model = XRayGAN(config, len(vocabulary), with_discriminators=False)
        return cls(model.to(device), config, vocabulary, ["randomly initialised, untrained model"])

    def _encode(self, text: str, name: str, notes: list[str]) -> tuple[EncodedSection, list[list[str]]]:
        max_sentences, max_words = self.config.max_sentences, self.config.max_words
        encoded = encode_section(text, self.vocabulary, max_sentences, max_words)
        if encoded.truncated:
            message = (
                f"the {name} section is longer than the model reads ({max_sentences} sentences of "
                f"{max_words} words); the rest was ignored"
            )
            warnings.warn(message, UserWarning, stacklevel=3)
            notes.append(message)
        return encoded, _section_tokens(text, max_sentences, max_words)

    @torch.no_grad()
    def __call__(self, report: str, generator: torch.Generator | None = None) -> XRayGANOutput:
        """Generate both views for ``report``.

        ``report`` is raw text: ``FINDINGS:``/``IMPRESSION:`` headers are recognised (other
        headers are dropped); text without headers is read as findings. ``generator`` seeds the
        noise input and only matters for a model with ``noise_dim > 0``; without noise (the
        paper's model) the output depends on the report alone. Raises
        :class:`~xrg.errors.EmptyReportError` for a report without words.
        """
        findings_text, impression_text = split_report_text(report)
        notes = list(self.notes)
        findings, findings_tokens = self._encode(findings_text, "findings", notes)
        impression, impression_tokens = self._encode(impression_text, "impression", notes)
        if findings.num_sentences == 0 and impression.num_sentences == 0:
            raise EmptyReportError(f"report has no words the encoder can read: {report[:80]!r}")
        device = self.device
        findings_ids, findings_mask = pad_sections([findings])
        impression_ids, impression_mask = pad_sections([impression])
        encoding = self.model.encoder(
            findings_ids.to(device), findings_mask.to(device), impression_ids.to(device), impression_mask.to(device)
        )
        noise = None
        if self.config.noise_dim:
            noise = torch.randn(1, self.config.noise_dim, generator=generator).to(device)
        images = self.model.generate(encoding.c, self.config.num_stages - 1, noise)
        frontal, lateral = (to_image_range(images[view][0]).clamp(0, 1).cpu() for view in ("frontal", "lateral"))
        attention = {}
        if encoding.findings is not None and encoding.impression is not None:
            attention = {
                "findings": _attention("findings", findings_tokens, encoding.findings),
                "impression": _attention("impression", impression_tokens, encoding.impression),
            }
        unknown = [
            word
            for tokens in (*findings_tokens, *impression_tokens)
            for word in tokens
            if self.vocabulary.index(word) == Vocabulary.UNK_INDEX
        ]
        return XRayGANOutput(
            frontal=frontal,
            lateral=lateral,
            findings=findings_text,
            impression=impression_text,
            attention=attention,
            unknown_words=unknown,
            warnings=notes,
        )

    def __repr__(self) -> str:
        return (
            f"XRayGANPipeline({self.config.generator_kind}, {self.config.encoder_kind} encoder, "
            f"{self.image_size}px, {len(self.vocabulary)} words, device {self.device})"
        )


def save_pair(output: XRayGANOutput, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``frontal.png`` and ``lateral.png`` of ``output`` into ``out_dir``."""
    out_dir = Path(out_dir)
    return {
        view: save_png(out_dir / f"{view}.png", getattr(output, view)[0].numpy())
        for view in ("frontal", "lateral")
    }
