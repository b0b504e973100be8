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
# # The report encoder: what XRayGAN reads
#
# XRayGAN's hierarchical attentional encoder (§2.1 of the paper) reads a report as
# sentences of words. A word-level BiLSTM with attention turns each sentence into a vector,
# a sentence-level BiLSTM with attention turns the sentences into a section vector, and the
# FINDINGS and IMPRESSION vectors together form the condition *c* of every generator. The
# attention weights say which words and sentences the model leans on. The encoder is trained
# jointly with the generators, so this chapter loads (or trains) the profile's XRayGAN run.

# %% tags=["parameters"]
# Run
profile: str = "tiny"  # profile of the XRayGAN run
data_dir: str = "../data/tiny"  # data directory written by `xrg data build`
run_dir: str = "../runs/tiny/xraygan"  # XRayGAN run directory (trained here when missing)
seed: int = 0  # global seed
# Reports
report_id: str = "1000"  # Open-i report to show (1000 opens the paper's Figure 4)
num_reports: int = 200  # test reports over which word attention is averaged

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display
from myst_nb import glue

from xrg.data.datasets import XRayPairDataset, collate_pairs
from xrg.data.reports import load_openi_reports, report_text
from xrg.notebook import check_params, mean_word_attention, setup
from xrg.pipelines import XRayGANPipeline
from xrg.train.runs import ensure_xraygan_run

run = setup(
    seed=seed,
    profile=profile,
    params=dict(data_dir=data_dir, run_dir=run_dir, report_id=report_id, num_reports=num_reports),
)
check_params(data_dir=(data_dir, "existing_dir"), num_reports=(num_reports, range(1, 100_000)))
checkpoint = ensure_xraygan_run(profile, data_dir, run_dir, device="cpu")
pipe = XRayGANPipeline.from_checkpoint(checkpoint)
pipe

# %% [markdown]
# ## Word and sentence attention on one report

# %%
report = next((r for r in load_openi_reports().reports if r.report_id == report_id), None)
if report is None:
    raise ValueError(f"notebook parameter report_id={report_id!r} is not a usable Open-i report id (e.g. '1000')")
output = pipe(report_text(report.findings, report.impression, headers=True))
display(Markdown(f"**FINDINGS:** {report.findings}\n\n**IMPRESSION:** {report.impression}"))


# %% tags=["hide-input"]
def plot_section(attention, ax):
    """One row per sentence; each word shaded by its attention, the sentence weight on the left."""
    ax.set_axis_off()
    for row, (words, weights, sentence_weight) in enumerate(
        zip(attention.sentences, attention.word_weights, attention.sentence_weights)
    ):
        y = -row
        ax.text(
            0,
            y,
            f"{sentence_weight:.2f}",
            fontsize=9,
            family="monospace",
            va="center",
            bbox=dict(facecolor=plt.cm.Oranges(sentence_weight), edgecolor="none", pad=2),
        )
        x = 0.07
        for word, weight in zip(words, weights):
            ax.text(
                x,
                y,
                word,
                fontsize=9,
                va="center",
                bbox=dict(facecolor=plt.cm.Blues(0.9 * weight / max(weights)), edgecolor="none", pad=2),
            )
            x += 0.011 * (len(word) + 2)
    ax.set_xlim(0, 1)
    ax.set_ylim(-len(attention.sentences), 1)
    ax.set_title(f"{attention.section}: sentence weight (orange) and word weights (blue)", loc="left", fontsize=10)


sections = [a for a in output.attention.values() if a.sentences]
fig, axes = plt.subplots(
    len(sections), 1, figsize=(11, 0.45 * sum(len(a.sentences) + 2 for a in sections)), squeeze=False
)
for attention, ax in zip(sections, axes[:, 0]):
    plot_section(attention, ax)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Which words does the encoder attend to?
#
# Averaged over held-out (test) reports, the words with the highest mean attention weight
# within their sentence (words seen at least five times):

# %%
test_set = XRayPairDataset(data_dir, split="test", vocab=pipe.vocabulary)
outputs = (pipe(report_text(case.findings, case.impression, headers=True)) for case in test_set.cases[:num_reports])
table = mean_word_attention(outputs, min_count=5)
table.head(15).reset_index(drop=True)

# %% [markdown]
# ## Padding does not change the condition
#
# The official XRayGAN code did not mask padding in its attention, so a report's condition
# depended on the longest report in its batch. Here attention is masked and the LSTMs run on
# packed sequences: a report encoded alone and inside a padded batch gives the same *c*.

# %%
model = pipe.model.encoder.eval()
items = [test_set[i] for i in range(min(8, len(test_set)))]
with torch.no_grad():
    batch = collate_pairs(items)
    together = model(batch["findings_ids"], batch["findings_mask"], batch["impression_ids"], batch["impression_mask"]).c
    alone = torch.cat(
        [
            model(b["findings_ids"], b["findings_mask"], b["impression_ids"], b["impression_mask"]).c
            for b in (collate_pairs([item]) for item in items)
        ]
    )
max_difference = float((together - alone).abs().max())
glue("encoder_padding_max_diff", max_difference, display=False)
print(f"largest difference between batched and single encodings: {max_difference:.2e}")

# %% tags=["remove-input"]
# Provenance: wall time of this notebook, recorded for the book's run table.
run.finish()
