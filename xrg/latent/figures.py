"""Figures of the PGGAN chapter: samples, the FID map (Figures 4.3, 4.4), prevalence (4.5), a search trajectory.

matplotlib is imported when a function is called; each returns its figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


def plot_image_rows(rows: Mapping[str, torch.Tensor | np.ndarray], title: str = "", width: float = 1.4) -> Any:
    """One row of images per entry (``[N, 1, H, W]`` or ``[N, H, W]`` in [0, 1]), the key as its label."""
    import matplotlib.pyplot as plt

    count = max(len(images) for images in rows.values())
    fig, axes = plt.subplots(len(rows), count, figsize=(width * count, width * len(rows) + 0.4), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(count):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(images):
                picture = np.asarray(images[c]).squeeze()
                ax.imshow(picture, cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_title(label, loc="left", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_fid_map(matrix: Mapping[str, Any]) -> Any:
    """The classes placed by MDS of their pairwise FIDs (left) and their average-linkage dendrogram (right)."""
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram

    names, embedding = matrix["names"], np.asarray(matrix["embedding"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.scatter(embedding[:, 0], embedding[:, 1], color="tab:blue")
    for (x, y), name in zip(embedding, names):
        left.annotate(name.replace("_", " "), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    left.set_title("MDS of the pairwise FIDs (Figure 4.3)")
    left.set_xlabel("MDS 1 (FID units)")
    left.set_ylabel("MDS 2 (FID units)")
    dendrogram(matrix["linkage"], labels=[n.replace("_", " ") for n in names], ax=right, leaf_rotation=60)
    right.set_title("average-linkage clustering (Figure 4.4)")
    right.set_ylabel("FID")
    fig.tight_layout()
    return fig


def plot_prevalence(real: Mapping[str, Any], generated: Mapping[str, Any], names: Sequence[str]) -> Any:
    """Per finding, the evaluator-called share of real and of generated images with 95% CIs (Figure 4.5)."""
    import matplotlib.pyplot as plt

    names = [n for n in names if real.get(n) is not None and generated.get(n) is not None]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 3.8))
    for offset, (label, values, colour) in enumerate(
        (("real test renders", real, "tab:gray"), ("PGGAN, uncurated", generated, "tab:orange"))
    ):
        means = np.array([values[n]["value"] for n in names])
        cis = [
            c if c and c[0] is not None else (m, m) for c, m in ((values[n]["ci"], values[n]["value"]) for n in names)
        ]
        low = means - np.array([ci[0] for ci in cis])
        high = np.array([ci[1] for ci in cis]) - means
        ax.bar(x + (offset - 0.5) * 0.38, means, 0.38, yerr=[low, high], capsize=3, label=label, color=colour)
    ax.set_xticks(x, [n.replace("_", " ") for n in names], rotation=30, ha="right")
    ax.set_ylabel("share called positive by the evaluator")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_trajectory(result: Any, frames: int = 6) -> Any:
    """A search's images at evenly spaced steps (top) and every class's logit per step (bottom)."""
    import matplotlib.pyplot as plt

    steps = np.unique(np.linspace(0, result.steps, min(frames, result.steps + 1)).round().astype(int))
    fig = plt.figure(figsize=(1.6 * max(len(steps), 4), 4.6))
    grid = fig.add_gridspec(2, len(steps), height_ratios=[1, 1.2])
    column = result.class_names.index(result.class_name)
    for i, s in enumerate(steps):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(((result.images[s, 0] + 1) / 2).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"step {s}", fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    logits = result.logits.numpy()
    for k, name in enumerate(result.class_names):
        ax.plot(logits[:, k], lw=2.5 if k == column else 0.8, alpha=1 if k == column else 0.5,
                label=name.replace("_", " ") if k == column else None)  # fmt: skip
    ax.axhline(result.threshold, color="k", ls="--", lw=0.8, label="threshold")
    ax.set_xlabel("step")
    ax.set_ylabel("search-classifier logit")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(
        f"{result.class_name.replace('_', ' ')}: {'passed' if result.success else 'failed'} after {result.steps} steps"
        " (thin lines: the other findings)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
