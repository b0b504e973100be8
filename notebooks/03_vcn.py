# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The view-consistency network
#
# XRayGAN's view-consistency network (VCN, §2.3) is a siamese ResNet-18 that embeds a
# frontal and a lateral image and predicts whether they show the same patient:
# $P(\text{same}) = \sigma(\sum_j w_j |f_j(\text{frontal}) - f_j(\text{lateral})|)$. One VCN is
# trained per stage resolution, offline, on the **training split only** (the official code
# trained it on test images), with true pairs as positives and a frontal paired with another
# patient's lateral as negatives. During GAN training it is frozen and its score is a reward.

# %% tags=["parameters"]
# Run
profile: str = "tiny"  # profile of the XRayGAN run
data_dir: str = "../data/tiny"  # data directory written by `xrg data build`
run_dir: str = "../runs/tiny/xraygan"  # XRayGAN run directory (trained here when missing)
seed: int = 0  # global seed (also draws the mismatched test pairs)

# %% tags=["hide-input"]
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from myst_nb import glue
from torchmetrics.functional.classification import binary_roc

from xrg.data.datasets import XRayPairDataset
from xrg.eval.consistency import pair_scores
from xrg.notebook import check_params, read_metrics, setup
from xrg.profiles import load_profile
from xrg.train.runs import ensure_xraygan_run
from xrg.train.vcn import VCNTrainConfig, load_vcn, vcn_path
from xrg.train.xraygan import XRayGANTrainConfig

run = setup(seed=seed, profile=profile, params=dict(data_dir=data_dir, run_dir=run_dir))
check_params(data_dir=(data_dir, "existing_dir"))
checkpoint = ensure_xraygan_run(profile, data_dir, run_dir, device="cpu")
sizes = XRayGANTrainConfig.from_profile(load_profile(profile)).vcn_sizes
curves = pd.DataFrame(read_metrics(Path(run_dir) / "vcn", kind="vcn"))

# %% [markdown]
# ## Training curves

# %% tags=["hide-input"]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
for size, rows in curves.groupby("image_size"):
    axes[0].plot(rows["epoch"] + 1, rows["loss"], marker="o", label=f"{size}px")
    axes[1].plot(rows["epoch"] + 1, rows["train_accuracy"], marker="o", label=f"{size}px")
axes[0].set(xlabel="epoch", ylabel="binary cross-entropy", title="training loss")
axes[1].set(xlabel="epoch", ylabel="accuracy", title="training accuracy (same vs different patient)")
axes[0].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## On held-out patients
#
# Accuracy and ROC AUC on the test split's true and mismatched pairs, and the mean
# P(same patient) of the true pairs: the VC of real images, the ceiling for generated ones
# (the paper reports 0.669 on Open-i).

# %%
test_set = XRayPairDataset(data_dir, split="test")
rows, fig, ax = [], *plt.subplots(figsize=(4.2, 4))
for size in sizes:
    config = VCNTrainConfig.from_profile(load_profile(profile), image_size=size)
    vcn = load_vcn(vcn_path(run_dir, size), config, test_set.vocab)
    rows.append(
        {
            "resolution": f"{size}px",
            **{k: vcn.metrics[k] for k in ("accuracy", "auroc", "real_vc", "num_positive", "num_negative")},
        }
    )
    probs, labels = pair_scores(vcn.model, XRayPairDataset(data_dir, split="test", image_size=size), seed=seed)
    fpr, tpr, _ = binary_roc(probs, labels)
    ax.plot(fpr, tpr, label=f"{size}px (AUC {vcn.metrics['auroc']:.2f})")
ax.plot([0, 1], [0, 1], "k:", lw=1)
ax.set(xlabel="false positive rate", ylabel="true positive rate", title="test ROC")
ax.legend(fontsize=8)
plt.show()
summary = pd.DataFrame(rows).set_index("resolution")
glue("vcn_test_auroc", float(summary["auroc"].iloc[-1]), display=False)
glue("vcn_real_vc", float(summary["real_vc"].iloc[-1]), display=False)
summary.round(3)

# %% tags=["remove-input"]
# Provenance: wall time of this notebook, recorded for the book's run table.
run.finish()
