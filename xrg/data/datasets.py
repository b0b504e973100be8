"""A torch ``Dataset`` of report/bi-planar image pairs over any xrg data directory.

Each item holds the hierarchically encoded FINDINGS and IMPRESSION sections (word ids and
masks, XRayGAN §2.1), the frontal and lateral images at the requested resolution
(antialiased area resampling, so lower-resolution GAN stages see properly filtered
targets), the multi-hot finding labels, the case and patient ids and the report text (with
its section headers, as :func:`xrg.data.reports.split_report_text` reads it back; the
controls of :mod:`xrg.eval.controls` read it). :func:`collate_pairs` pads the
sections of a batch to a common shape.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from xrg.data.findings import FINDING_KINDS, multi_hot
from xrg.data.images import load_grayscale
from xrg.data.manifest import (
    SPLITS,
    VIEWS as VIEWS,  # re-exported: defined once, in the manifest module
    VOCAB_NAME,
    Case,
    read_manifest,
)
from xrg.data.reports import (
    MAX_SENTENCES,
    MAX_WORDS,
    EncodedSection,
    Vocabulary,
    encode_section,
    pad_sections,
    report_text,
)
from xrg.errors import ConfigError, DataDirError
from xrg.paths import PathsInside, path_inside


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a (..., H, W) tensor to ``size`` x ``size``: area-averaging down, bicubic up."""
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    batched = image.reshape(-1, 1, *image.shape[-2:])
    if size < image.shape[-1]:
        out = F.interpolate(batched, size=(size, size), mode="area")
    else:
        out = F.interpolate(batched, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return out.reshape(*image.shape[:-2], size, size)


class XRayPairDataset(Dataset):
    """Cases of one split (or all) of a data directory.

    Images are decoded once and kept in memory as uint8 at their stored resolution, then
    resized per item. ``vocab`` defaults to the directory's ``vocab.json`` (train split only).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str | None = "train",
        image_size: int | None = None,
        vocab: Vocabulary | None = None,
        max_sentences: int = MAX_SENTENCES,
        max_words: int = MAX_WORDS,
        canonical: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        if split is not None and split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS} or None, got {split!r}")
        if image_size is not None and not 8 <= image_size <= 1024:
            raise ConfigError(f"image_size must be in 8..1024, got {image_size}")
        cases = read_manifest(self.data_dir)
        self.cases: list[Case] = [c for c in cases if split is None or c.split == split]
        if not self.cases:
            raise DataDirError(f"{self.data_dir} has no cases in split {split!r}")
        if vocab is None:
            vocab_path = path_inside(self.data_dir, VOCAB_NAME, f"{self.data_dir}: vocabulary")
            if not vocab_path.is_file():
                raise DataDirError(f"{self.data_dir} has no {VOCAB_NAME}; pass a vocabulary or rebuild the dataset")
            vocab = Vocabulary.load(vocab_path)
        if canonical:
            missing = [c.id for c in self.cases if not c.canonical]
            if missing:
                raise DataDirError(
                    f"{self.data_dir}: {len(missing)} of the {len(self.cases)} {split or 'all'} cases (e.g. {missing[0]}) "
                    "have no canonical-pose renders; build the data again with `xrg data build --canonical-targets` "
                    "(or canonical_targets: true in the profile's data settings; only the new renders are drawn)"
                )
        self.canonical = canonical
        self.vocab = vocab
        self.split = split
        self.image_size = image_size
        self.max_sentences = max_sentences
        self.max_words = max_words
        self._images: dict[tuple[int, str], torch.Tensor] = {}
        self._inside = PathsInside(self.data_dir)
        self._sections: dict[int, tuple[EncodedSection, EncodedSection]] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def _image(self, index: int, view: str, canonical: bool = False) -> torch.Tensor:
        key = (index, f"{view}_canonical" if canonical else view)
        if key not in self._images:
            case = self.cases[index]
            relative = case.canonical[view] if canonical else getattr(case, view)
            path = self._inside(relative, f"{self.data_dir}: {key[1]} image")
            array = load_grayscale(path)
            self._images[key] = torch.from_numpy(np.round(array * 255).astype(np.uint8))
        image = self._images[key].float().div_(255.0).unsqueeze(0)
        return resize_image(image, self.image_size) if self.image_size else image

    def stored_size(self, view: str = "frontal") -> int:
        """The side of the first case's stored ``view`` image (before any resizing)."""
        self._image(0, view)  # decoded once and kept
        return int(self._images[(0, view)].shape[-1])

    def _encoded(self, index: int) -> tuple[EncodedSection, EncodedSection]:
        if index not in self._sections:
            case = self.cases[index]
            self._sections[index] = (
                encode_section(case.findings, self.vocab, self.max_sentences, self.max_words),
                encode_section(case.impression, self.vocab, self.max_sentences, self.max_words),
            )
        return self._sections[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} cases")
        index = index % len(self)
        case = self.cases[index]
        findings, impression = self._encoded(index)
        return {
            "case_id": case.id,
            "patient_id": case.patient_id,
            "index": index,
            "report_text": report_text(case.findings, case.impression, headers=True),
            "findings": findings,
            "impression": impression,
            "frontal": self._image(index, "frontal"),
            "lateral": self._image(index, "lateral"),
            "labels": torch.from_numpy(multi_hot(case.structured_findings)),
            **{f"{view}_canonical": self._image(index, view, True) for view in VIEWS if self.canonical},
        }

    @property
    def label_names(self) -> tuple[str, ...]:
        return FINDING_KINDS


def collate_pairs(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack images and labels; pad findings/impression to ``[B, S, W]`` ids and masks; list ids and texts."""
    findings_ids, findings_mask = pad_sections([item["findings"] for item in batch])
    impression_ids, impression_mask = pad_sections([item["impression"] for item in batch])
    return {
        "case_id": [item["case_id"] for item in batch],
        "patient_id": [item["patient_id"] for item in batch],
        "index": torch.tensor([item["index"] for item in batch]),
        "report_text": [item["report_text"] for item in batch],
        "findings_ids": findings_ids,
        "findings_mask": findings_mask,
        "impression_ids": impression_ids,
        "impression_mask": impression_mask,
        "frontal": torch.stack([item["frontal"] for item in batch]),
        "lateral": torch.stack([item["lateral"] for item in batch]),
        "labels": torch.stack([item["labels"] for item in batch]),
        **{
            f"{view}_canonical": torch.stack([item[f"{view}_canonical"] for item in batch])
            for view in VIEWS
            if f"{view}_canonical" in batch[0]
        },
    }
