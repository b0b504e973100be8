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
from xrg.eval.run import EvalConfig, evaluate_controls, evaluate_run, generate_for_cases, generate_for_texts
from xrg.notebook import check_params, controls_table, format_interval, headline_entry, image_grid, setup
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
eval_config = EvalConfig.from_profile(loaded)
result = evaluate_run(run_dir, data_dir, evaluators, eval_config, inception_weights=inception_weights or None)
print(f"scored {result['num_reports']} test reports in {result['seconds']:.0f} s")
# the controls, scored on the same test batches: one mean image for all, the nearest train report, the phantom
model = load_generator(run_dir)  # the scored run, for the controls and the figures below
controls = evaluate_controls(model, data_dir, evaluators, eval_config, Path(experiment_dir) / "controls")

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
# ## Against its controls
#
# Every number below means something only beside what a generator that does *not* read the
# report scores. Three controls are scored by the same protocol on the same test reports:
# the **mean image** (the train split's pixel-wise mean pair, the same for every report), a
# **retrieval** baseline (the train pair whose report is closest to the test report, TF-IDF
# cosine) and the **phantom** itself (the report's findings drawn into the test patient: the
# real renders, and the ceiling under edits). Where the mean image scores at least as well as
# XRayGAN the last column says so: that metric is not evidence that the model draws the report.
# Detection − false alarm counts findings at thresholds fixed on the evaluator cohort, over
# the findings the evaluator judges reliably there (listed below); the fidelity AUROC only
# ranks, so near-identical images with tiny label-correlated changes can win it.

# %% tags=["hide-input"]
versus = controls_table("XRayGAN", result, controls)
mean_wins = [name for name, row in versus.iterrows() if row["mean image wins?"] == "yes"]
glue("eval_mean_image_wins", len(mean_wins), display=False)
glue("eval_metrics_with_controls", len(versus), display=False)
print(f"the mean image scores at least as well as XRayGAN on {len(mean_wins)} of {len(versus)} metrics")
versus

# %% tags=["hide-input"]
judged = result.get("judged_findings", {}).get("frontal", {})
print(f"judged findings ({len(judged.get('included', []))}): {', '.join(judged.get('included', [])) or 'none'}")
pd.Series(judged.get("excluded", {}), name="why not judged").to_frame()

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
    "VC-AUROC generated": result["vc_auroc"]["generated"],
    "VC-AUROC real": result["vc_auroc"]["real"],
}
headline = {name: headline_entry(v) for name, v in headline.items()}
glue("eval_fid", headline["FID both views"]["value"], display=False)
glue("eval_ssim_frontal", headline["SSIM frontal"]["value"], display=False)
glue("eval_vc_generated", headline["VC generated"]["value"], display=False)
glue("eval_vc_real", headline["VC real"]["value"], display=False)
nan_if_none = lambda value: float("nan") if value is None else value  # noqa: E731
glue("eval_kid", nan_if_none(headline["KID both views"]["value"]), display=False)
glue("eval_vc_auroc", nan_if_none(headline["VC-AUROC generated"]["value"]), display=False)
glue("eval_vc_auroc_real", nan_if_none(headline["VC-AUROC real"]["value"]), display=False)
glue("eval_detection_frontal", nan_if_none(result["detection"]["generated"]["frontal"]["value"]), display=False)
glue("eval_detection_frontal_real", nan_if_none(result["detection"]["real"]["frontal"]["value"]), display=False)
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
# probability of the edited finding moves the intended way by at least the stated margin
# *and* more than every other finding moved. A generator that ignores the text scores 0 (the
# mean image: the floor), the phantom under the same edits is the ceiling, and the placebo is
# the same images scored against other reports' edits (chance). The older score, any movement
# the intended way, is shown beside it: its chance level is about 0.5.


# %% tags=["hide-input"]
def controllability_row(entry):
    if not entry or entry.get("value") is None:
        return {"success (margin)": "–", "placebo": "–", "any direction": "–"}
    return {
        "success (margin)": format_interval(entry),
        "placebo": format_interval(entry.get("placebo")),
        "any direction": format_interval((entry.get("any_direction") or {}).get("success_rate")),
    }


control = result.get("controllability", {})
glue("eval_controllability", control.get("value") if control.get("value") is not None else float("nan"),
     display=False)  # fmt: skip
print(f"margin {control.get('margin', '–')}: {control.get('definition', control.get('reason', ''))}")
pd.DataFrame(
    {"XRayGAN": controllability_row(control),
     **{name: controllability_row(r.get("controllability")) for name, r in controls.items()}}
).T  # fmt: skip

# %% tags=["hide-input"]
edits = result.get("controllability_edits", [])[:num_edit_examples]
if edits:
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
