"""View consistency (VC, XRayGAN §3.2): how likely a frontal and a lateral image show the
same patient, according to a frozen view-consistency network.

``pair_scores`` gives P(same patient) for the true pairs of a dataset and for as many
mismatched pairs (each frontal with another patient's lateral), for ROC curves;
``generated_vc`` scores pairs an XRayGAN pipeline generates from the dataset's reports.
"""

from __future__ import annotations

from typing import Any

import torch

from xrg.data.datasets import XRayPairDataset, resize_image
from xrg.data.reports import report_text
from xrg.models.vcn import ViewConsistencyNet, negative_partners
from xrg.models.xraygan import to_model_range


@torch.no_grad()
def _embed(model: ViewConsistencyNet, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    device = next(model.parameters()).device
    parts = [
        model.embed(to_model_range(images[i : i + batch_size].to(device))).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts)


@torch.no_grad()
def pair_scores(
    model: ViewConsistencyNet, dataset: XRayPairDataset, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probabilities, labels)``: true pairs (label 1) then mismatched pairs (label 0)."""
    model.eval()
    frontal = _embed(model, torch.stack([dataset[i]["frontal"] for i in range(len(dataset))]))
    lateral = _embed(model, torch.stack([dataset[i]["lateral"] for i in range(len(dataset))]))
    rows, partners = negative_partners([c.patient_id for c in dataset.cases], torch.Generator().manual_seed(seed))
    positive = model.pair_probability(frontal, lateral).cpu()
    negative = model.pair_probability(frontal[rows], lateral[partners]).cpu()
    return torch.cat([positive, negative]), torch.cat([torch.ones_like(positive), torch.zeros_like(negative)]).long()


@torch.no_grad()
def generated_vc(
    pipe: Any, model: ViewConsistencyNet, dataset: XRayPairDataset, limit: int | None = None
) -> dict[str, float]:
    """Mean P(same patient) of generated pairs for the dataset's reports, beside real pairs'.

    Generated images are resized to the VCN's dataset resolution (area averaging), so both
    are scored at the same size.
    """
    model.eval()
    count = len(dataset) if limit is None else min(limit, len(dataset))
    size = dataset[0]["frontal"].shape[-1]
    fake_f, fake_l, real_f, real_l = [], [], [], []
    for index in range(count):
        case = dataset.cases[index]
        output = pipe(report_text(case.findings, case.impression, headers=True))
        fake_f.append(resize_image(output.frontal, size))
        fake_l.append(resize_image(output.lateral, size))
        real_f.append(dataset[index]["frontal"])
        real_l.append(dataset[index]["lateral"])

    def score(frontal: list[torch.Tensor], lateral: list[torch.Tensor]) -> torch.Tensor:
        return model.pair_probability(_embed(model, torch.stack(frontal)), _embed(model, torch.stack(lateral))).mean()

    return {"generated_vc": float(score(fake_f, fake_l)), "real_vc": float(score(real_f, real_l)), "num_pairs": count}
