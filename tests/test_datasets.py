"""The torch Dataset over a manifest and its collate function."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from xrg.data.datasets import XRayPairDataset, collate_pairs, resize_image
from xrg.data.findings import FINDING_KINDS, multi_hot
from xrg.errors import ConfigError, DataDirError


def test_items_have_the_documented_shapes(tiny_data):
    dataset = XRayPairDataset(tiny_data, split="train", image_size=16)
    item = dataset[0]
    assert item["frontal"].shape == item["lateral"].shape == (1, 16, 16)
    assert item["frontal"].dtype == torch.float32 and 0 <= item["frontal"].min() <= item["frontal"].max() <= 1
    assert item["labels"].shape == (len(FINDING_KINDS),)
    assert torch.equal(item["labels"], torch.from_numpy(multi_hot(dataset.cases[0].structured_findings)))
    assert item["findings"].ids.shape == item["findings"].mask.shape
    assert item["patient_id"] == dataset.cases[0].patient_id


def test_batches_are_padded_with_masks(tiny_data):
    dataset = XRayPairDataset(tiny_data, split=None, image_size=32)
    batch = next(iter(DataLoader(dataset, batch_size=5, collate_fn=collate_pairs)))
    assert batch["frontal"].shape == (5, 1, 32, 32)
    ids, mask = batch["findings_ids"], batch["findings_mask"]
    assert ids.shape == mask.shape and ids.dim() == 3 and ids.shape[0] == 5
    assert (ids[~mask] == 0).all(), "padding positions must hold the PAD id"
    assert (ids[mask] != 0).all(), "real words are never PAD"


def test_split_filter_and_bad_arguments(tiny_data, tmp_path):
    sizes = {s: len(XRayPairDataset(tiny_data, split=s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == len(XRayPairDataset(tiny_data, split=None))
    with pytest.raises(ConfigError, match="split"):
        XRayPairDataset(tiny_data, split="training")
    with pytest.raises(DataDirError, match="does not exist"):
        XRayPairDataset(tmp_path / "missing")
    with pytest.raises(IndexError):
        XRayPairDataset(tiny_data)[10_000]


def test_downsampling_is_area_averaging_not_nearest():
    image = torch.zeros(1, 8, 8)
    image[:, ::2, ::2] = 1.0
    assert torch.allclose(resize_image(image, 4), torch.full((1, 4, 4), 0.25))
    assert resize_image(image, 16).shape == (1, 16, 16)
