"""Generation pipelines: a trained checkpoint plus a report text in, a frontal/lateral pair out.

:class:`XRayGANPipeline` is kept apart from the modules (as diffusers keeps pipelines apart
from models): the model rebuilds itself from the model config and vocabulary stored in its
checkpoint (:meth:`xrg.models.xraygan.XRayGAN.from_checkpoint`, :mod:`xrg.checkpoint`), and
the pipeline turns raw report text into the encoder's input the way the training data was
encoded (XRayGAN §2.1: FINDINGS and IMPRESSION, sentences, words)::

    pipe = XRayGANPipeline.from_checkpoint("runs/cpu")          # a run directory or a .pt file
    out = pipe("FINDINGS: Mild cardiomegaly. IMPRESSION: No acute disease.")
    out.images()["frontal"].save("frontal.png")
    outs = pipe([report_a, report_b])                           # a list: one output per report

The output holds both views at the final resolution in [0, 1], the word and sentence
attention of the hierarchical encoder with the tokens they weigh (for plotting), the words
the vocabulary does not know (read as ``<unk>``) and any warnings (truncated report,
unfinished training run). :class:`Pipeline` is what every model family's pipeline offers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, overload, runtime_checkable

import torch
from PIL import Image

from xrg.checkpoint import CHECKPOINT_NAME
from xrg.data.images import save_png, to_uint8
from xrg.data.manifest import VIEWS
from xrg.data.reports import (
    EncodedSection,
    Vocabulary,
    encode_section,
    pad_sections,
    split_report_text,
    split_sentences,
    tokenize,
)
from xrg.errors import CheckpointError, EmptyReportError, ReportError
from xrg.models.encoder import SectionEncoding
from xrg.models.xraygan import XRayGAN, XRayGANModelConfig, to_image_range

SECTIONS: tuple[str, str] = ("findings", "impression")


@runtime_checkable
class Pipeline(Protocol):
    """What a model family's generation pipeline offers: report text(s) in, frontal/lateral pairs out.

    ``__call__`` takes one report (returning one output) or a list of reports (returning a
    list of outputs, in order); ``generator`` seeds whatever the model draws.
    """

    @property
    def image_size(self) -> int: ...

    @property
    def views(self) -> tuple[str, ...]: ...

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Any: ...

    def __call__(self, report: str | Sequence[str], generator: torch.Generator | None = None) -> Any: ...


def run_checkpoint(path: str | os.PathLike, what: str = "an XRayGAN run") -> Path:
    """``RUN/checkpoint.pt`` of a run directory, or the file ``path`` itself."""
    path = Path(path)
    if path.is_dir():
        if not (path / CHECKPOINT_NAME).is_file():
            raise CheckpointError(f"{path} is a directory without a {CHECKPOINT_NAME}; is it {what}?")
        path = path / CHECKPOINT_NAME
    return path


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
        return {view: Image.fromarray(to_uint8(getattr(self, view)[0].numpy())) for view in VIEWS}


def _section_tokens(text: str, max_sentences: int, max_words: int) -> list[list[str]]:
    """The tokens :func:`encode_section` keeps, sentence by sentence."""
    sentences = [tokens for sentence in split_sentences(text) if (tokens := tokenize(sentence))]
    return [tokens[:max_words] for tokens in sentences[:max_sentences]]


def _attention(name: str, tokens: list[list[str]], encoding: SectionEncoding, row: int = 0) -> SectionAttention:
    word_weights = encoding.word_weights[row].cpu()
    return SectionAttention(
        section=name,
        sentences=tokens,
        word_weights=[word_weights[i, : len(sentence)].tolist() for i, sentence in enumerate(tokens)],
        sentence_weights=encoding.sentence_weights[row, : len(tokens)].cpu().tolist(),
    )


class XRayGANPipeline:
    """Report text → frontal and lateral X-ray, with a trained XRayGAN (see the module docstring).

    ``config`` is the model's :class:`~xrg.models.xraygan.XRayGANModelConfig`.
    """

    views: tuple[str, ...] = VIEWS

    def __init__(self, model: XRayGAN, vocabulary: Vocabulary, notes: list[str] | None = None) -> None:
        self.model = model.eval()
        self.config: XRayGANModelConfig = model.config
        self.vocabulary = vocabulary
        self.notes = list(notes or [])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> int:
        return self.config.final_size

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> XRayGANPipeline:
        """Load the encoder and generators of an XRayGAN checkpoint (or of ``RUN/checkpoint.pt``)."""
        path = run_checkpoint(path)
        model = XRayGAN.from_checkpoint(path, map_location=device)
        info = model.checkpoint_info
        notes = []
        if not info.progress.get("finished", False):
            notes.append(
                f"checkpoint {path} is from an unfinished training run (step {info.progress.get('step')}); "
                "the later stages may be untrained"
            )
        return cls(model, info.vocabulary, notes)

    @classmethod
    def from_config(
        cls, config: Any, vocabulary: Vocabulary, seed: int = 0, device: str | torch.device = "cpu"
    ) -> XRayGANPipeline:
        """An untrained pipeline with seeded random weights (for benchmarks and tests).

        ``config`` is an :class:`~xrg.models.xraygan.XRayGANModelConfig` or an XRayGAN run
        config (``XRayGANTrainConfig``), read for ``vocabulary``.
        """
        if not isinstance(config, XRayGANModelConfig):
            config = XRayGANModelConfig.from_run_config(config, len(vocabulary))
        torch.manual_seed(seed)
        model = XRayGAN(config, with_discriminators=False)
        return cls(model.to(device), vocabulary, ["randomly initialised, untrained model"])

    def _encode(self, text: str, name: str, notes: list[str]) -> tuple[EncodedSection, list[list[str]]]:
        max_sentences, max_words = self.config.max_sentences, self.config.max_words
        encoded = encode_section(text, self.vocabulary, max_sentences, max_words)
        if encoded.truncated:
            message = (
                f"the {name} section is longer than the model reads ({max_sentences} sentences of "
                f"{max_words} words); the rest was ignored"
            )
            warnings.warn(message, UserWarning, stacklevel=4)
            notes.append(message)
        return encoded, _section_tokens(text, max_sentences, max_words)

    @overload
    def __call__(self, report: str, generator: torch.Generator | None = None) -> XRayGANOutput: ...

    @overload
    def __call__(self, report: Sequence[str], generator: torch.Generator | None = None) -> list[XRayGANOutput]: ...

    @torch.no_grad()
    def __call__(
        self, report: str | Sequence[str], generator: torch.Generator | None = None
    ) -> XRayGANOutput | list[XRayGANOutput]:
        """Generate both views for ``report``, or for every report of a list (one output each, in order).

        A report is raw text: ``FINDINGS:``/``IMPRESSION:`` headers are recognised (other
        headers are dropped); text without headers is read as findings. ``generator`` seeds the
        noise input (one row per report, in order) and only matters for a model with
        ``noise_dim > 0``; without noise (the paper's model) an output depends on its report
        alone. Raises :class:`~xrg.errors.EmptyReportError` for a report without words.
        """
        if not isinstance(report, (list, tuple)):
            return self._generate([report], generator)[0]  # a str, or refused naming what it is
        for item in report:
            if not isinstance(item, str):
                raise ReportError(
                    f"a {type(report).__name__} of reports must hold strings, got a {type(item).__name__}"
                )
        return self._generate(list(report), generator, batched=type(report).__name__)

    def _generate(
        self, reports: list[str], generator: torch.Generator | None, batched: str | None = None
    ) -> list[XRayGANOutput]:
        parsed = []
        for number, report in enumerate(reports):
            try:
                findings_text, impression_text = split_report_text(report)
                notes = list(self.notes)
                findings, findings_tokens = self._encode(findings_text, "findings", notes)
                impression, impression_tokens = self._encode(impression_text, "impression", notes)
                if findings.num_sentences == 0 and impression.num_sentences == 0:
                    raise EmptyReportError(f"report has no words the encoder can read: {report[:80]!r}")
            except ReportError as error:
                if batched is None:
                    raise
                raise type(error)(f"{error} (report {number + 1} of the {batched} of {len(reports)})") from error
            parsed.append(
                (findings_text, impression_text, findings, impression, findings_tokens, impression_tokens, notes)
            )
        if not parsed:
            return []
        device = self.device
        findings_ids, findings_mask = pad_sections([p[2] for p in parsed])
        impression_ids, impression_mask = pad_sections([p[3] for p in parsed])
        encoding = self.model.encoder(
            findings_ids.to(device), findings_mask.to(device), impression_ids.to(device), impression_mask.to(device)
        )
        noise = None
        if self.config.noise_dim:
            noise = torch.randn(len(parsed), self.config.noise_dim, generator=generator).to(device)
        images = self.model.generate(encoding.c, self.config.num_stages - 1, noise)
        images = {view: to_image_range(images[view]).clamp(0, 1).cpu() for view in self.views}
        outputs = []
        for row, (findings_text, impression_text, _, _, findings_tokens, impression_tokens, notes) in enumerate(parsed):
            attention = {}
            if encoding.findings is not None and encoding.impression is not None:
                attention = {
                    "findings": _attention("findings", findings_tokens, encoding.findings, row),
                    "impression": _attention("impression", impression_tokens, encoding.impression, row),
                }
            unknown = [
                word
                for tokens in (*findings_tokens, *impression_tokens)
                for word in tokens
                if self.vocabulary.index(word) == Vocabulary.UNK_INDEX
            ]
            outputs.append(
                XRayGANOutput(
                    frontal=images["frontal"][row],
                    lateral=images["lateral"][row],
                    findings=findings_text,
                    impression=impression_text,
                    attention=attention,
                    unknown_words=unknown,
                    warnings=notes,
                )
            )
        return outputs

    def __repr__(self) -> str:
        return (
            f"XRayGANPipeline({self.config.generator_kind}, {self.config.encoder_kind} encoder, "
            f"{self.image_size}px, {len(self.vocabulary)} words, device {self.device})"
        )


def save_pair(output: XRayGANOutput, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``frontal.png`` and ``lateral.png`` of ``output`` into ``out_dir``."""
    out_dir = Path(out_dir)
    return {view: save_png(out_dir / f"{view}.png", getattr(output, view)[0].numpy()) for view in VIEWS}


# --------------------------------------------------------------------------------------
# DiffuseVAE: a finding set or a report in, one view out
# --------------------------------------------------------------------------------------

#: The stages whose checkpoints sample, in the order a DiffuseVAE run directory is searched.
DIFFUSEVAE_SAMPLING_STAGES: tuple[str, ...] = ("finetune", "ddpm")


def diffusevae_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint to sample of ``path``: a file, a stage directory, or a DiffuseVAE run
    directory (its ``finetune`` stage, else its ``ddpm`` stage)."""
    path = Path(path)
    candidates = [
        path,
        path / CHECKPOINT_NAME,
        *(path / stage / CHECKPOINT_NAME for stage in DIFFUSEVAE_SAMPLING_STAGES),
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"{path} holds no DiffuseVAE checkpoint (a file, {CHECKPOINT_NAME}, finetune/{CHECKPOINT_NAME} or "
        f"ddpm/{CHECKPOINT_NAME}); train one with xrg train diffusevae --stage ddpm"
    )


def prompt_findings(prompt: str, report: bool = False) -> tuple[tuple[str, ...], str]:
    """The finding kinds and the report text of a DiffuseVAE prompt: a condition (finding names,
    ``;`` between them; the text is the short report they describe) or, with ``report``, report
    text (its findings as the labeller reads them)."""
    from xrg.data.findings import Finding, describe_findings, label_text
    from xrg.data.findings.schema import multi_hot
    from xrg.models.diffusevae import FINDING_KINDS, parse_condition

    if not report:
        kinds = parse_condition(prompt)
        return kinds, describe_findings([Finding(kind) for kind in kinds])
    if not prompt.strip():
        raise EmptyReportError("the report is empty")
    labels = multi_hot(label_text(prompt))
    return tuple(kind for kind, value in zip(FINDING_KINDS, labels) if value > 0), prompt


@dataclass
class DiffuseVAEOutput:
    """One sample: the refined ``image`` and the VAE's ``vae`` draw it started from, ``[1, S, S]`` in [0, 1]."""

    image: torch.Tensor
    vae: torch.Tensor
    view: str
    findings: tuple[str, ...]  # the finding kinds of the condition (a report's as the labeller reads it)
    prompt: str  # the condition or report as given
    warnings: list[str] = field(default_factory=list)

    def images(self) -> dict[str, Image.Image]:
        """``{view: refined, "vae": the VAE draw}`` as 8-bit greyscale PIL images."""
        return {
            self.view: Image.fromarray(to_uint8(self.image[0].numpy())),
            "vae": Image.fromarray(to_uint8(self.vae[0].numpy())),
        }


class DiffuseVAEPipeline:
    """A finding set (``"pleural effusion; cardiomegaly"``) or report text → DiffuseVAE samples of one view.

    A model conditioned on findings reads a report through the findings labeller
    (:func:`~xrg.data.findings.label_text`); one conditioned on reports reads a finding set as the
    short report :func:`~xrg.data.findings.describe_findings` writes.
    """

    def __init__(self, model: Any, vocabulary: Vocabulary, notes: list[str] | None = None) -> None:
        self.model = model.eval()
        self.vocabulary = vocabulary
        self.notes = list(notes or [])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def views(self) -> tuple[str, ...]:
        return (self.model.view,)

    @property
    def mode(self) -> str:
        return self.model.config.unet.condition.mode

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> DiffuseVAEPipeline:
        from xrg.models.diffusevae import DiffuseVAE

        path = diffusevae_checkpoint(path)
        model = DiffuseVAE.from_checkpoint(path, map_location=device)
        return cls(
            model,
            model.checkpoint_info.vocabulary,
            [f"{model.checkpoint_info.progress.get('diffusevae_stage')} stage of {path}"],
        )

    def condition_batch(self, findings: Sequence[tuple[str, ...]], texts: Sequence[str]) -> dict[str, Any]:
        """The model's condition input for cases of finding kinds ``findings`` and report ``texts``."""
        from xrg.models.diffusevae import finding_labels

        batch: dict[str, Any] = {"labels": torch.stack([finding_labels(kinds) for kinds in findings])}
        if self.mode == "report":
            settings = self.model.config.unet.condition
            sections = [split_report_text(text) for text in texts]
            for index, name in enumerate(SECTIONS):
                encoded = [
                    encode_section(s[index], self.vocabulary, settings.max_sentences, settings.max_words)
                    for s in sections
                ]
                batch[f"{name}_ids"], batch[f"{name}_mask"] = pad_sections(encoded)
        return batch

    @torch.no_grad()
    def __call__(
        self, prompt: str, n: int = 1, *, report: bool = False, generator: torch.Generator | None = None,
        steps: int | None = None, guidance: float = 1.0, eta: float = 0.0, progress: Any = None,
    ) -> list[DiffuseVAEOutput]:  # fmt: skip
        """``n`` samples of ``prompt``: a condition (finding names, ``;`` between them) or, with
        ``report=True``, report text. ``steps`` DDIM steps (None: ancestral over all T)."""
        kinds, text = prompt_findings(prompt, report)
        batch = self.condition_batch([kinds] * n, [text] * n)
        out = self.model.generate(batch, n, generator=generator, steps=steps, guidance=guidance, eta=eta,
                                  progress=progress)  # fmt: skip
        image, vae = (to_image_range(out[key]).clamp(0, 1).cpu() for key in ("image", "vae"))
        return [DiffuseVAEOutput(image[i], vae[i], self.model.view, kinds, prompt, list(self.notes)) for i in range(n)]
