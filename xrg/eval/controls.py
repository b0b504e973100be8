"""The control rows of every evaluation table: generators a number must beat to mean anything.

A metric that a text-blind or a copying generator wins is not evidence that a model follows
its report. Each control here is a :class:`~xrg.eval.generators.PairGenerator` without a
checkpoint, fitted on the TRAIN split only, so it is scored by exactly the protocol (and on
exactly the test batches) of the models it is compared with:

* :class:`MeanImageControl` (``"mean image"``): the pixel-wise mean frontal and lateral of the
  train split, the same pair for every report. It ignores the text; whatever it scores, a
  model must beat (SSIM against the ground truth, for one, rewards such blur).
* :class:`RetrievalControl` (``"retrieval"``): the real images of the train case whose report
  is closest to the query (TF-IDF cosine over the word ids the models read; IDF fitted on the
  train reports; ties go to the lowest case index). A model that only memorised the train
  split scores like this.
* :class:`PhantomControl` (``"phantom"``): the query report's findings drawn by the CT phantom
  (the renderer the data were built with) into the case's own patient, or into a fixed
  reference patient for a text without a case. For an unedited test report it is the real
  test render, pixel for pixel (the "real renders" row); under an edit it is the phantom
  under the same edit (the ceiling of controllability).

:func:`control_generators` builds them with the image size, vocabulary and report limits of
the model they are compared with. Every control has ``takes_noise = False`` (one image per
report, whatever the seed) and :meth:`describe` says what it is and what it was fitted on.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from xrg.data.datasets import XRayPairDataset, resize_image
from xrg.data.findings import FINDING_KINDS, Finding, label_text
from xrg.data.images import to_uint8
from xrg.data.manifest import VIEWS, Case, read_manifest
from xrg.data.reports import (
    MAX_SENTENCES,
    MAX_WORDS,
    EncodedSection,
    Vocabulary,
    encode_section,
    report_text,
    split_report_text,
)
from xrg.errors import ConfigError, DataDirError, EmptyReportError
from xrg.eval.generators import PairGenerator

#: The control rows, in table order.
CONTROL_NAMES: tuple[str, ...] = ("mean image", "retrieval", "phantom")
#: Rendered pairs a :class:`PhantomControl` keeps (controllability renders each unedited report twice).
RENDER_CACHE_SIZE = 1024


def _check_image_size(image_size: object) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not 8 <= image_size <= 1024:
        raise ConfigError(f"control image_size must be an integer in 8..1024, got {image_size!r}")
    return int(image_size)


def _train_split(
    data_dir: str | os.PathLike,
    image_size: object,
    vocabulary: Vocabulary | None,
    max_sentences: int,
    max_words: int,
) -> XRayPairDataset:
    """The train split of ``data_dir`` as a model reads it (``vocabulary`` defaults to the directory's
    ``vocab.json``); refuses a missing directory, an empty train split or a bad image size."""
    size = _check_image_size(image_size)
    if not any(case.split == "train" for case in read_manifest(data_dir)):  # names a missing directory first
        raise DataDirError(
            f"{data_dir} has no train cases: a control is fitted on the train split only, never on val or test"
        )
    return XRayPairDataset(data_dir, "train", image_size=size, vocab=vocabulary,
                           max_sentences=max_sentences, max_words=max_words)  # fmt: skip


def _read_like(train: XRayPairDataset) -> dict[str, Any]:
    """The :class:`_Control` settings of a control fitted on ``train``: how it reads reports, what it saw."""
    ids = [case.id for case in train.cases]
    fitted_on = {
        "data_dir": str(train.data_dir.resolve()),
        "split": "train",
        "num_cases": len(ids),
        "case_ids_sha256": hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest(),
    }
    return {"image_size": train.image_size, "vocabulary": train.vocab, "max_sentences": train.max_sentences,
            "max_words": train.max_words, "fitted_on": fitted_on}  # fmt: skip


def _batch_size(batch: Mapping[str, Any]) -> int:
    ids = batch.get("findings_ids") if isinstance(batch, Mapping) else None
    if not isinstance(ids, torch.Tensor) or ids.dim() != 3:
        raise ConfigError("a batch must hold findings_ids [B, S, W] (build it with collate_pairs or encode_reports)")
    return int(ids.shape[0])


def _batch_list(batch: Mapping[str, Any], key: str, size: int) -> list[Any] | None:
    values = batch.get(key)
    if values is None:
        return None
    values = list(values)
    if len(values) != size:
        raise ConfigError(f"batch {key} has {len(values)} entries for {size} reports")
    return values


class _Control:
    """What the three controls share: the :class:`PairGenerator` attributes and :meth:`describe`."""

    method: str
    takes_noise = False  # one pair per report, whatever the seed
    what: str

    def __init__(
        self, image_size: int, vocabulary: Vocabulary, max_sentences: int, max_words: int, fitted_on: dict[str, Any]
    ) -> None:
        self.image_size = image_size
        self.vocabulary = vocabulary
        self.max_sentences = max_sentences
        self.max_words = max_words
        self.fitted_on = fitted_on

    def describe(self) -> dict[str, Any]:
        """What the control is and what it was fitted on (plain values, for ``eval.json`` sources)."""
        return {
            "method": self.method,
            "control": True,
            "what": self.what,
            "image_size": self.image_size,
            "takes_noise": self.takes_noise,
            "fitted_on": dict(self.fitted_on),
        }

    @property
    def sources(self) -> dict[str, Any]:
        return self.describe()


class MeanImageControl(_Control):
    """The pixel-wise mean train pair, returned for every report (the text is ignored)."""

    method = "mean image"
    what = "pixel-wise mean of the train split's images, per view; the same pair for every report"

    def __init__(self, mean: Mapping[str, torch.Tensor], **common: Any) -> None:
        super().__init__(**common)
        self.mean = {view: mean[view] for view in VIEWS}  # [1, H, W] float32 in [0, 1]

    @classmethod
    def fit(
        cls,
        data_dir: str | os.PathLike,
        image_size: int,
        vocabulary: Vocabulary | None = None,
        max_sentences: int = MAX_SENTENCES,
        max_words: int = MAX_WORDS,
    ) -> MeanImageControl:
        train = _train_split(data_dir, image_size, vocabulary, max_sentences, max_words)
        total = {view: torch.zeros(1, train.image_size, train.image_size, dtype=torch.float64) for view in VIEWS}
        for index in range(len(train)):
            item = train[index]
            for view in VIEWS:
                total[view] += item[view].double()
        mean = {view: (total[view] / len(train)).float() for view in VIEWS}
        return cls(mean, **_read_like(train))

    def generate(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        size = _batch_size(batch)
        return {view: self.mean[view].expand(size, -1, -1, -1).clone() for view in VIEWS}


class RetrievalControl(_Control):
    """The real pair of the train case whose report is nearest to the query (TF-IDF cosine).

    Reports are bags of the word ids the models read (the model's vocabulary, sentence and
    word limits; ``<pad>`` and ``<unk>`` left out) over FINDINGS and IMPRESSION together.
    Term frequencies are raw counts, the IDF is the smoothed ``ln((1 + N) / (1 + df)) + 1``
    over the N train reports, and each vector is L2-normalised. The highest cosine wins; equal
    cosines (within 1e-9) go to the lowest train case index, so retrieval is deterministic. A
    query without a known word has cosine 0 with every case and gets train case 0.
    ``retrieved`` lists the train case ids of every report generated so far, in order.
    """

    method = "retrieval"
    what = "real images of the nearest train report (TF-IDF cosine over word ids, IDF fitted on train)"

    def __init__(self, train: XRayPairDataset, idf: torch.Tensor, documents: torch.Tensor, **common: Any) -> None:
        super().__init__(**common)
        self.train = train
        self.idf = idf  # [V] float64
        self.documents = documents  # [N, V] float64, L2-normalised TF-IDF rows
        self.retrieved: list[str] = []

    @classmethod
    def fit(
        cls,
        data_dir: str | os.PathLike,
        image_size: int,
        vocabulary: Vocabulary | None = None,
        max_sentences: int = MAX_SENTENCES,
        max_words: int = MAX_WORDS,
    ) -> RetrievalControl:
        train = _train_split(data_dir, image_size, vocabulary, max_sentences, max_words)
        sections = [
            [encode_section(text, train.vocab, max_sentences, max_words) for text in (case.findings, case.impression)]
            for case in train.cases
        ]  # as the dataset encodes them
        counts = torch.stack([cls._counts(pair, len(train.vocab)) for pair in sections])
        document_frequency = (counts > 0).sum(0).double()
        idf = torch.log((1.0 + len(train)) / (1.0 + document_frequency)) + 1.0
        return cls(train, idf, _normalised(counts * idf), **_read_like(train))

    @staticmethod
    def _counts(sections: Sequence[EncodedSection], vocabulary_size: int) -> torch.Tensor:
        """Word-id counts ``[V]`` of encoded sections, without pad and unk."""
        ids = torch.cat([section.ids[section.mask].reshape(-1) for section in sections])
        counts = torch.bincount(ids, minlength=vocabulary_size).double()
        counts[[Vocabulary.PAD_INDEX, Vocabulary.UNK_INDEX]] = 0.0
        return counts

    def similarities(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """TF-IDF cosine ``[B, N]`` of each report of ``batch`` to each train report."""
        size, vocabulary_size = _batch_size(batch), len(self.vocabulary)
        rows = []
        for b in range(size):
            sections = []
            for name in ("findings", "impression"):
                ids, mask = batch[f"{name}_ids"][b], batch[f"{name}_mask"][b].bool()
                sections.append(EncodedSection(ids.long(), mask))
            words = torch.cat([s.ids[s.mask] for s in sections])
            if len(words) and (int(words.max()) >= vocabulary_size or int(words.min()) < 0):
                raise ConfigError(
                    f"batch word ids run 0..{int(words.max())} but the retrieval vocabulary has {vocabulary_size} "
                    "words: encode the reports with the control's vocabulary"
                )
            rows.append(self._counts(sections, vocabulary_size))
        return _normalised(torch.stack(rows) * self.idf) @ self.documents.T

    def retrieve(self, batch: Mapping[str, Any]) -> tuple[list[int], torch.Tensor]:
        """Train case indices of the nearest reports and their cosine similarities (``1`` = distance 0)."""
        scores = self.similarities(batch)
        best = scores.max(dim=1, keepdim=True).values
        indices = (scores >= best - 1e-9).int().argmax(dim=1)  # the first (lowest) index among the ties
        return [int(i) for i in indices], best[:, 0]

    def retrieved_case_ids(self, batch: Mapping[str, Any]) -> list[str]:
        """The train case ids the reports of ``batch`` retrieve (for the memorisation figure)."""
        return [self.train.cases[i].id for i in self.retrieve(batch)[0]]

    def generate(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        indices, _ = self.retrieve(batch)
        self.retrieved.extend(self.train.cases[i].id for i in indices)
        items = [self.train[i] for i in indices]
        return {view: torch.stack([item[view] for item in items]) for view in VIEWS}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "vocabulary_size": len(self.vocabulary), "tie_break": "lowest train index"}


def _normalised(rows: torch.Tensor) -> torch.Tensor:
    norms = rows.norm(dim=1, keepdim=True)
    return rows / torch.where(norms > 0, norms, torch.ones_like(norms))


def _labelled(text: str) -> list[Finding]:
    """What the labeller reads from a report's FINDINGS and IMPRESSION (nothing for an empty report)."""
    try:
        findings, impression = split_report_text(text)
    except EmptyReportError:
        return []
    return label_text(report_text(findings, impression))


def _present(findings: Sequence[Finding], kind: str) -> list[tuple[str, str, str]]:
    return sorted((str(f.side), str(f.zone), str(f.severity)) for f in findings if f.kind == kind and not f.negated)


def edited_findings(case: Case, text: str) -> list[Finding]:
    """The findings to draw for ``text`` written about ``case``: its drawn findings under the same edit.

    The case's own text and ``text`` are both labelled; for every finding kind the labeller
    reads differently (negated, a new severity or side, added), the case's structured
    findings of that kind are replaced by what the labeller reads in ``text``; every other
    kind keeps the case's findings. For the case's unedited report nothing changes, so the
    render is the case's own.
    """
    before = _labelled(report_text(case.findings, case.impression, headers=True))
    after = _labelled(text)
    changed = {kind for kind in FINDING_KINDS if _present(before, kind) != _present(after, kind)}
    kept = [f for f in case.structured_findings if f.kind not in changed]
    return kept + [f for f in after if f.kind in changed and not f.negated]


class PhantomControl(_Control):
    """The query's findings drawn by the data's own CT phantom: the real renders, and their edits.

    A report whose batch names its case (``case_id``, any split) is drawn into that case's
    patient with the case's structured findings, changed only where the report's text was
    edited (:func:`edited_findings`); an unedited test report thus gives its real test render
    exactly. A report without a case gets the labeller's findings in the reference patient (by
    default the first train case's). Renders use the data build's image size and CT grid, are
    stored as 8-bit as the build stores them, then resized to ``image_size`` as the dataset
    resizes them. The CT preprocessing is cached on disk by the renderer (``XRG_CACHE_DIR``).
    """

    method = "phantom"
    what = "the report's findings drawn by the data's CT phantom into the case's own patient (real renders)"

    def __init__(
        self,
        cases: Mapping[str, Case],
        reference_seed: int,
        build: Mapping[str, Any],
        cache_dir: str | os.PathLike | None = None,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        from xrg.data.phantom import PhantomRenderer

        self.cases = dict(cases)
        self.reference_seed = int(reference_seed)
        self.build = dict(build)
        self.renderer = PhantomRenderer(int(self.build["volume_size"]), cache_dir=cache_dir)
        self._renders: OrderedDict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()

    @classmethod
    def fit(
        cls,
        data_dir: str | os.PathLike,
        image_size: int,
        vocabulary: Vocabulary | None = None,
        max_sentences: int = MAX_SENTENCES,
        max_words: int = MAX_WORDS,
        reference_seed: int | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> PhantomControl:
        from xrg.data.build import read_build_record

        train = _train_split(data_dir, image_size, vocabulary, max_sentences, max_words)
        record = read_build_record(data_dir)
        config = record.get("config")
        if not isinstance(config, Mapping) or not {"image_size", "volume_size"} <= set(config):
            raise DataDirError(f"{data_dir}/build.json names no image_size and volume_size: rebuild the dataset")
        cases = {case.id: case for case in read_manifest(data_dir)}
        unseeded = [case.id for case in cases.values() if case.seed is None]
        if unseeded:
            raise DataDirError(
                f"{data_dir} is not a phantom dataset: case {unseeded[0]} has no patient seed "
                f"({len(unseeded)} such cases); the phantom control needs `xrg data build` data"
            )
        if reference_seed is None:
            reference_seed = train.cases[0].seed
        build = {key: config[key] for key in ("image_size", "volume_size", "findings_source", "seed") if key in config}
        return cls(cases, reference_seed, build, cache_dir, **_read_like(train))

    def findings_for(self, text: str | None, case_id: str | None) -> tuple[list[Finding], int]:
        """The findings drawn for one report and the patient seed they are drawn into."""
        if case_id is None:
            if text is None:
                raise ConfigError("the phantom control needs each report's report_text or case_id in the batch")
            return _labelled(text), self.reference_seed
        case = self.cases.get(case_id)
        if case is None:
            raise ConfigError(f"batch case_id {case_id!r} is not a case of {self.fitted_on['data_dir']}")
        if text is None:
            return list(case.structured_findings), int(case.seed)
        return edited_findings(case, text), int(case.seed)

    def render(self, findings: Sequence[Finding], seed: int) -> dict[str, torch.Tensor]:
        """Both views ``[1, H, W]`` at ``image_size``, exactly as the dataset reads a stored render."""
        key = ("\n".join(repr(f) for f in findings), int(seed))
        stored = self._renders.get(key)
        if stored is None:
            pair = self.renderer.render(findings, seed=int(seed), size=int(self.build["image_size"]))
            stored = (to_uint8(pair.frontal), to_uint8(pair.lateral))
            self._renders[key] = stored
            if len(self._renders) > RENDER_CACHE_SIZE:
                self._renders.popitem(last=False)
        else:
            self._renders.move_to_end(key)
        images = {}
        for view, array in zip(VIEWS, stored):
            image = torch.from_numpy(array).float().div_(255.0).unsqueeze(0)
            images[view] = resize_image(image, self.image_size)
        return images

    def generate(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        size = _batch_size(batch)
        texts = _batch_list(batch, "report_text", size) or [None] * size
        case_ids = _batch_list(batch, "case_id", size) or [None] * size
        pairs = [self.render(*self.findings_for(text, case_id)) for text, case_id in zip(texts, case_ids)]
        return {view: torch.stack([pair[view] for pair in pairs]) for view in VIEWS}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "reference_seed": self.reference_seed, "build": dict(self.build)}


CONTROLS: dict[str, type[_Control]] = {
    "mean image": MeanImageControl,
    "retrieval": RetrievalControl,
    "phantom": PhantomControl,
}


def control_generators(
    data_dir: str | os.PathLike, like: PairGenerator, names: Sequence[str] = CONTROL_NAMES
) -> list[PairGenerator]:
    """The controls ``names`` fitted on the train split of ``data_dir``, read like the model ``like``.

    They take ``like``'s image size, vocabulary and report limits, so they are scored on
    exactly the batches the model is scored on.
    """
    unknown = [name for name in names if name not in CONTROLS]
    if unknown:
        raise ConfigError(f"unknown control {unknown[0]!r}; the controls are {', '.join(CONTROL_NAMES)}")
    return [
        CONTROLS[name].fit(data_dir, like.image_size, like.vocabulary, like.max_sentences, like.max_words)
        for name in names
    ]


# --------------------------------------------------------------------------- reading a model beside its controls

#: The metrics every results table shows beside the controls: (label, key path in eval.json, higher is better).
HEADLINE_METRICS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("KID (both views)", ("kid",), False),
    ("FID (both views)", ("fid", "both"), False),
    ("SSIM frontal", ("ssim", "frontal"), True),
    ("VC (mean P same patient)", ("vc",), True),
    ("VC-AUROC matched vs mismatched", ("vc_auroc", "generated"), True),
    ("detection − false alarm, frontal", ("detection", "generated", "frontal"), True),
    ("detection − false alarm, lateral", ("detection", "generated", "lateral"), True),
    ("controllability (margin)", ("controllability",), True),
    ("fidelity AUROC macro, frontal (ranking only)", ("fidelity", "generated", "frontal", "macro"), True),
)
#: The control whose win discredits a metric: it ignores the report.
MEAN_IMAGE = "mean image"


def result_entry(result: Mapping[str, Any], path: Sequence[str]) -> dict[str, Any] | None:
    """The estimate at ``path`` of an eval.json result (``{"value", "ci", ...}``), or None when absent."""
    node: Any = result
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, Mapping) and "value" in node else None


def compare_with_controls(
    model: Mapping[str, Any], controls: Mapping[str, Mapping[str, Any]], metrics: Sequence[Any] = HEADLINE_METRICS
) -> list[dict[str, Any]]:
    """One row per headline metric: the model's estimate, each control's, and whether the mean image wins.

    ``mean_image_wins`` is True when the mean-image control scores at least as well as the
    model (by the metric's direction), None when either value is missing: such a number is
    not evidence that the model draws the report, whatever the metric is called.
    """
    rows = []
    for label, path, higher in metrics:
        entries = {"model": result_entry(model, path), **{name: result_entry(r, path) for name, r in controls.items()}}
        model_value = (entries["model"] or {}).get("value")
        mean_value = (entries.get(MEAN_IMAGE) or {}).get("value")
        wins = None
        if model_value is not None and mean_value is not None:
            wins = bool(mean_value >= model_value) if higher else bool(mean_value <= model_value)
        rows.append({"metric": label, "higher_is_better": higher, "entries": entries, "mean_image_wins": wins})
    return rows
