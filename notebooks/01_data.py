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
# # The data: real reports rendered through a real CT
#
# Every model in this book learns from pairs of a radiology report and two radiographs of
# the same patient, a frontal (PA) and a lateral view. Real image archives cannot be
# downloaded here, so the default dataset is built from two real sources that ship inside
# Python packages: the 3,955 **Open-i reports** with their curated MeSH findings, and a
# **chest CT with organ masks**. Each report's findings are drawn into the CT of a patient
# whose anatomy is varied by a seed, and the CT is projected into both views
# (`xrg.data.phantom`). This chapter looks at the reports, at how findings are extracted
# from them, and at what the renderer makes of them.

# %% tags=["parameters"]
# Run
profile: str = "tiny"  # profile the data directory was built with
data_dir: str = "../data/tiny"  # data directory written by `xrg data build`
seed: int = 0  # seed of the dataset build (patient anatomy, split)
# Gallery
examples_seed: int = 7  # phantom patient shown in the per-finding gallery
gallery_size: int = 64  # image size of the gallery, 32..256
# Labeller agreement
agreement_reports: int = 300  # reports scored for MeSH vs text agreement (0 for all)

# %% tags=["hide-input"]
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from xrg.data.build import case_findings, patient_seed
from xrg.data.findings import FINDING_KINDS, Finding, mesh_to_findings, openi_agreement
from xrg.data.manifest import SPLITS, VIEWS, read_manifest
from xrg.data.phantom import PhantomRenderer
from xrg.data.reports import load_openi_reports, report_text, split_sentences, tokenize
from xrg.notebook import check_params, image_grid, is_abnormal, setup

run = setup(
    seed=seed,
    profile=profile,
    params=dict(
        data_dir=data_dir, examples_seed=examples_seed, gallery_size=gallery_size, agreement_reports=agreement_reports
    ),
)
check_params(
    data_dir=(data_dir, "existing_dir"),
    gallery_size=(gallery_size, range(32, 257)),
    agreement_reports=(agreement_reports, range(0, 10_000)),
)
data_dir = Path(data_dir)

# %% [markdown]
# ## The reports
#
# The Open-i archive holds one XML file per report. Each report has FINDINGS and IMPRESSION
# sections written by a radiologist, MeSH terms added by curators, and the ids of its images.
# A report without any FINDINGS or IMPRESSION text cannot condition a generator and is
# skipped.

# %%
collection = load_openi_reports()
reports = collection.reports
print(f"{len(reports)} usable reports; skipped: {dict(collection.skipped)}")
glue("n_reports", len(reports), display=False)

# %% tags=["hide-input"]
sentences = [split_sentences(report_text(r.findings, r.impression)) for r in reports]
sentence_counts = np.array([len(s) for s in sentences])
word_counts = np.array([len(tokenize(s)) for doc in sentences for s in doc])
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
axes[0].hist(sentence_counts, bins=range(0, sentence_counts.max() + 2), color="#4c72b0")
axes[0].set(xlabel="sentences per report (findings + impression)", ylabel="reports")
axes[1].hist(word_counts, bins=range(0, word_counts.max() + 2), color="#dd8452")
axes[1].set(xlabel="words per sentence", ylabel="sentences")
fig.tight_layout()
plt.show()
stats = pd.DataFrame(
    {
        "median": [np.median(sentence_counts), np.median(word_counts)],
        "99th percentile": [np.percentile(sentence_counts, 99), np.percentile(word_counts, 99)],
        "max": [sentence_counts.max(), word_counts.max()],
    },
    index=["sentences per report", "words per sentence"],
)
stats

# %% [markdown]
# ## Findings: curated MeSH terms and a text labeller
#
# The renderer draws structured findings (`xrg.data.findings.Finding`: kind, side, zone,
# severity, negated). Open-i's curators tagged each report with MeSH terms such as
# `Opacity/lung/upper lobe/right` or `Pleural Effusion/left/small`; these are mapped to
# findings and are what the dataset draws. A report a user types has no MeSH terms, so a
# rule-based labeller reads the text itself, with negation ("No pleural effusion." is not an
# effusion). Terms that describe nothing the renderer can draw (a tortuous aorta,
# degenerative spine changes) are counted and ignored.

# %%
mesh_counts: Counter = Counter()
unmapped: Counter = Counter()
for report in reports:
    findings, missing = mesh_to_findings(report.mesh)
    mesh_counts.update({f.kind for f in findings if not f.negated})
    unmapped.update(missing)
frequency = pd.Series({kind: mesh_counts.get(kind, 0) for kind in FINDING_KINDS}, name="reports")
ax = frequency.sort_values().plot.barh(figsize=(6, 4.5), color="#4c72b0")
ax.set(xlabel="reports with the finding (MeSH)", title="Finding frequency in Open-i")
plt.show()
print("most frequent MeSH head terms without a drawable finding:", unmapped.most_common(8))

# %% [markdown]
# How well does the text labeller agree with the curators? For each finding kind, a report
# counts as positive when either source has a present (non-negated) finding of that kind;
# MeSH is taken as the reference.

# %%
scored = reports[:agreement_reports] if agreement_reports else reports
table, _ = openi_agreement(scored)
glue("labeller_micro_f1", float(table.loc["micro", "f1"]), display=False)
table.round(3)

# %% [markdown]
# ## One real report and its rendered pair
#
# The report that opens the XRayGAN paper's Figure 4 (Open-i report 1000), its curated
# findings, and the pair the renderer makes for it. On the frontal view the patient's right
# is on the viewer's left; on the lateral view anterior is on the left.

# %%
report = next(r for r in reports if r.report_id == "1000")
findings, _ = case_findings(report, "mesh")
renderer = PhantomRenderer(volume_size=64 if gallery_size <= 64 else 128)
pair = renderer.render(findings, seed=patient_seed(seed, report.report_id), size=gallery_size)
display(
    Markdown(
        f"**FINDINGS:** {report.findings}\n\n**IMPRESSION:** {report.impression}\n\n"
        f"**MeSH:** {'; '.join(report.mesh)}\n\n"
        f"**Drawn:** {'; '.join(f.describe() for f in pair.drawn) or 'nothing (normal)'}"
    )
)
image_grid(
    [[pair.frontal, pair.lateral]],
    column_titles=("frontal (PA)", "lateral"),
    figsize=(7, 3.6),
    title_size=None,
    tight=False,
)
plt.show()

# %% [markdown]
# ## Every finding kind on the same patient
#
# Each row shows one patient without and with one finding. Because the anatomy, the exposure
# and even the detector noise come from the patient seed, the two images differ only where
# the finding is, in both views.

# %% tags=["hide-input"]
examples = {
    "cardiomegaly": Finding("cardiomegaly", severity="severe"),
    "pleural_effusion": Finding("pleural_effusion", side="right", severity="moderate"),
    "opacity": Finding("opacity", side="right", zone="upper", severity="severe"),
    "atelectasis": Finding("atelectasis", side="left", zone="lower", severity="moderate"),
    "nodule": Finding("nodule", side="right", zone="middle", severity="severe"),
    "granuloma": Finding("granuloma", side="left", zone="upper"),
    "calcified_granuloma": Finding("calcified_granuloma", side="right", zone="lower"),
    "pneumothorax": Finding("pneumothorax", side="left", severity="severe"),
    "emphysema": Finding("emphysema", severity="severe"),
    "edema": Finding("edema", severity="severe"),
    "hypoinflation": Finding("hypoinflation", severity="severe"),
    "pacemaker": Finding("pacemaker", side="left"),
    "central_line": Finding("central_line", side="right"),
    "sternotomy": Finding("sternotomy"),
    "scoliosis": Finding("scoliosis", side="right", severity="severe"),
}
normal = renderer.render([], seed=examples_seed, size=gallery_size)
with_finding = [renderer.render([finding], seed=examples_seed, size=gallery_size) for finding in examples.values()]
image_grid(
    [(normal.frontal, pair.frontal, normal.lateral, pair.lateral) for pair in with_finding],
    column_titles=("frontal, normal", "frontal, finding", "lateral, normal", "lateral, finding"),
    row_labels=[finding.describe() for finding in examples.values()],
    figsize=(8, 2.1 * len(examples)),
    label_size=8,
)
plt.show()

# %% [markdown]
# ## The dataset
#
# `xrg data build` renders every selected report this way and writes a manifest with a
# patient-level train/validation/test split (0.7/0.1/0.2); the vocabulary is built from the
# training reports only.

# %%
cases = read_manifest(data_dir)
split_table = pd.crosstab(
    pd.Series([c.split for c in cases], name="split"),
    pd.Series(
        ["abnormal" if is_abnormal(c) else "normal" for c in cases],
        name="drawn findings",
    ),
    margins=True,
)
patients = {s: {c.patient_id for c in cases if c.split == s} for s in SPLITS}
assert not (
    patients["train"] & patients["test"] or patients["train"] & patients["val"] or patients["val"] & patients["test"]
), "a patient is in two splits"
glue("n_cases", len(cases), display=False)
split_table

# %% tags=["hide-input"]
sample = [c for c in cases if c.split == "train"][:4]
image_grid(
    [[plt.imread(data_dir / getattr(case, view)) for case in sample] for view in VIEWS],
    column_titles=[case.id for case in sample],
    figsize=(2.6 * len(sample), 5.4),
)
plt.show()

# %% tags=["remove-input"]
# Provenance: wall time of this notebook, recorded for the book's run table.
run.finish()
