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
# # Evaluation: how good, how faithful, how controllable
#
# The paper scores XRayGAN with IS, FID, SSIM and view consistency (VC, §3.2). Here every
# number is computed by one protocol (`xrg eval`) with evaluator networks that no generator
# ever saw: the phantom renders the findings of the train reports into *new* patients, and a
# DenseNet-121 finding classifier and an evaluation VCN are trained on that cohort only. The
# classifier's pooled features are the FID/KID space, as the official XRayGAN did with a
# DenseNet-121 chest X-ray classifier (its IS is not computed: see below). Beyond the paper:
# does the generated image show the report's findings (fidelity), do the two views agree,
# does editing the report move the image the intended way (controllability), and does the
# model copy training images (memorisation)? Every value has a 95% interval that says how it
# was made.

# %% tags=["parameters"]
# Run
profile: str = "tiny"  # profile of the run and of the eval and evaluator sections
data_dir: str = "../data/tiny"  # data directory written by `xrg data build`
run_dir: str = "../runs/tiny/xraygan"  # the XRayGAN run scored here (trained when missing)
experiment_dir: str = "../runs/tiny/experiments"  # holds the evaluators, shared with the tables
seed: int = 0  # global seed
# Figures
num_edit_examples: int = 3  # controllability examples shown
inception_weights: str = ""  # local FID Inception weights file, empty for none

# %% tags=["hide-input"]
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from myst_nb import glue

from xrg.data.datasets import XRayPairDataset
from xrg.data.edits import apply_edit
from xrg.data.findings import FINDING_KINDS
from xrg.data.manifest import VIEWS
from xrg.data.reports import report_text
from xrg.eval.classifier import classifier_auroc
from xrg.eval.evaluators import EvaluatorConfig
from xrg.eval.generators import load_generator
from xrg.eval.run import EvalConfig, evaluate_run, generate_for_cases, generate_for_texts
from xrg.notebook import check_params, format_interval, headline_entry, image_grid, setup
from xrg.profiles import load_profile
from xrg.train.evaluators import ensure_evaluators
from xrg.train.runs import ensure_xraygan_run

run = setup(
    seed=seed,
    profile=profile,
    params=dict(data_dir=data_dir, run_dir=run_dir, experiment_dir=experiment_dir, num_edit_examples=num_edit_examples),
)
check_params(
    data_dir=(data_dir, "existing_dir"),
    num_edit_examples=(num_edit_examples, range(0, 17)),
    run_dir=(run_dir, str),
    experiment_dir=(experiment_dir, str),
    inception_weights=(inception_weights, str),
)
if inception_weights:
    check_params(inception_weights=(inception_weights, "existing_file"))
loaded = load_profile(profile)
checkpoint = ensure_xraygan_run(profile, data_dir, run_dir, device="cpu")
evaluators = ensure_evaluators(EvaluatorConfig.from_profile(loaded), data_dir, Path(experiment_dir) / "evaluators")
result = evaluate_run(
    run_dir, data_dir, evaluators, EvalConfig.from_profile(loaded), inception_weights=inception_weights or None
)
print(f"scored {result['num_reports']} test reports in {result['seconds']:.0f} s")

# %% [markdown]
# ## The evaluators
#
# The finding classifier's per-finding ROC AUC on the *real* test renders of the generator
# dataset (reports and patients it never saw) shows how far its judgement can be trusted;
# findings it cannot recognise on real images cannot be scored on generated ones either.

# %% tags=["hide-input"]
test_real = XRayPairDataset(data_dir, "test", image_size=evaluators.image_size)
auroc = classifier_auroc(evaluators.classifier, test_real)
table = pd.DataFrame({view: pd.Series(auroc[view]) for view in VIEWS}).reindex(FINDING_KINDS)
glue("eval_classifier_macro_auroc", float(np.nanmean(table.astype(float).values)), display=False)
table.astype(float).round(3)

# %% [markdown]
# ## The paper's metrics, with 95% intervals
#
# KID is the headline: unbiased, with an interval from its subset standard error. FID comes
# with an interval from half-sampling without replacement (for the large-sample FID, so it can
# lie below the small-sample value), and beside it the FID of real test renders against as
# many real cohort renders: what real images score. IS is not shown: the classifier is
# multi-label (sigmoid outputs, no "no finding" class), so a softmax over its logits is not a
# class distribution.

# %% tags=["hide-input"]
headline = {
    "KID both views": result["kid"],
    "FID frontal": result["fid"]["frontal"],
    "FID lateral": result["fid"]["lateral"],
    "FID both views": result["fid"]["both"],
    "FID real vs real (floor)": result["fid_floor"]["both"],
    "SSIM frontal": result["ssim"]["frontal"],
    "SSIM lateral": result["ssim"]["lateral"],
    "VC generated": result["vc"],
    "VC real": result["vc_real"],
}
headline = {name: headline_entry(v) for name, v in headline.items()}
glue("eval_fid", headline["FID both views"]["value"], display=False)
glue("eval_ssim_frontal", headline["SSIM frontal"]["value"], display=False)
glue("eval_vc_generated", headline["VC generated"]["value"], display=False)
glue("eval_vc_real", headline["VC real"]["value"], display=False)
print(f"IS is not computed: {result['is']['reason']}.")
pd.DataFrame(
    {
        "value [95% CI]": {k: format_interval(v) for k, v in headline.items()},
        "n": {k: v.get("n") for k, v in headline.items()},
        "interval": {k: v.get("method") for k, v in headline.items()},
    }
)

# %% [markdown]
# ## Finding fidelity
#
# For each finding, the classifier's ROC AUC at telling the generated images of reports with
# the finding from those without, per view, next to the same on the real renders (the
# ceiling a perfect generator would reach).


# %% tags=["hide-input"]
def per_finding(entry):
    return {kind: (entry.get(kind) or {}).get("value") for kind in FINDING_KINDS}


fidelity = pd.DataFrame(
    {
        f"{source} {view}": per_finding(result["fidelity"][source][view])
        for source in ("generated", "real")
        for view in VIEWS
    }
).astype(float)
fig, ax = plt.subplots(figsize=(10, 3.5))
fidelity[["real frontal", "generated frontal", "real lateral", "generated lateral"]].plot.bar(ax=ax, width=0.8)
ax.axhline(0.5, color="gray", lw=0.8, ls="--")
ax.set(ylabel="ROC AUC", ylim=(0, 1), title="finding fidelity: classifier AUROC on real renders vs generated images")
ax.legend(fontsize=7, ncol=4)
fig.tight_layout()
plt.show()
macro = result["fidelity"]["generated"]["frontal"].get("macro") or {}
glue(
    "eval_fidelity_frontal_macro", macro.get("value") if macro.get("value") is not None else float("nan"), display=False
)

# %% [markdown]
# ## Cross-view agreement and diversity
#
# How often the classifier makes the same call on a generated frontal and lateral, per
# finding (real renders for comparison); and MS-SSIM between generations of one report with
# different seeds (1 means the seed changes nothing: the paper's XRayGAN has no noise input).

# %% tags=["hide-input"]
agreement = pd.DataFrame(
    {source: per_finding(result["cross_view_agreement"][source]) for source in ("generated", "real")}
).astype(float)
diversity = {view: headline_entry(v) for view, v in result.get("diversity", {}).items()}
display_div = pd.DataFrame(
    {"MS-SSIM across seeds": {view: format_interval(v) if v.get("value") is not None else v.get("reason", "–")
                              for view, v in diversity.items()}}
)  # fmt: skip
agreement.round(3).T

# %% tags=["hide-input"]
display_div

# %% [markdown]
# ## Controllability
#
# Held-out reports edited by `xrg.data.edits`: one finding negated, or its severity
# moved; both versions generated with the same seed. An edit succeeds when the classifier's
# probability of the edited finding moves the intended way; the spill-over is the mean
# change of the other findings.

# %% tags=["hide-input"]
control = result.get("controllability", {})
summary = {key: value for key, value in control.items() if not isinstance(value, dict) or "value" in value}
rate = control.get("success_rate", {})
glue("eval_controllability", rate.get("value") if rate else float("nan"), display=False)
pd.Series({k: format_interval(v) if isinstance(v, dict) else v for k, v in summary.items()}).to_frame("value")

# %% tags=["hide-input"]
edits = result.get("controllability_edits", [])[:num_edit_examples]
if edits:
    model = load_generator(run_dir)
    test_cases = {c.id: c for c in XRayPairDataset(data_dir, "test").cases}
    rows = []
    for edit in edits:
        case = test_cases[edit["case_id"]]
        before = report_text(case.findings, case.impression, headers=True)
        after = apply_edit(before, edit["operation"], edit["kind"], edit["argument"]).text
        rows.append(generate_for_texts(model, [before, after], seed, 2)["frontal"])
    image_grid(
        rows,
        titles=[("as reported", f"{e['operation']} {e['kind']} {e['argument'] or ''}") for e in edits],
        figsize=(5, 2.6 * len(edits)),
        title_size=8,
    )
    plt.show()

# %% [markdown]
# ## Memorisation
#
# The distance from each generated frontal to its nearest training image (classifier
# features), relative to the same for real test frontals: a ratio well below 1 would mean the
# generator copies training images. The closest generated/train pairs are shown.

# %% tags=["hide-input"]
memo = result["memorisation"]
ratio = memo["ratio"]
glue("eval_memorisation_ratio", ratio["value"], display=False)
print(
    f"median NN distance: generated {memo['median_generated']:.3f}, real test {memo['median_test']:.3f}; "
    f"ratio {format_interval(ratio)}"
)
closest = memo["closest"][:4]
if closest:
    model = load_generator(run_dir)
    test_set = XRayPairDataset(data_dir, "test", image_size=model.image_size, vocab=model.vocabulary)
    train_set = XRayPairDataset(data_dir, "train", image_size=model.image_size, vocab=model.vocabulary)
    generated = [
        generate_for_cases(model, test_set, [pair["generated"]], result["config"]["seed"], 1)["frontal"][0]
        for pair in closest
    ]
    image_grid(
        [generated, [train_set[pair["train"]]["frontal"] for pair in closest]],
        titles=[[f"generated, d={pair['distance']:.2f}" for pair in closest], ["nearest train image"] * len(closest)],
        figsize=(2.4 * len(closest), 5),
        title_size=8,
    )
    plt.show()

# %% tags=["remove-input"]
# Provenance: wall time of this notebook, recorded for the book's run table.
run.finish()
