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
# # PGGAN and latent class optimisation: steering an unconditional GAN towards a finding
#
# The dissertation's system (§2.2.2, §3.2–3.4, chapter 4). An **unconditional** progressive
# GAN learns what chests look like from the frontal train renders, growing from 4² to the
# profile's final size with fade-in, equalised learning rate, pixel normalisation, minibatch
# standard deviation and a moving average of its generator (which every image below comes
# from). It knows nothing about findings. A **search classifier** trained on the same train
# split does: latent class optimisation (Algorithm 1) starts from a latent drawn from the
# truncated prior and follows the gradient of one finding's logit through the frozen
# generator until the classifier's validation threshold is passed, or a step budget runs out.
#
# A classifier can be fooled: an image that passes it may show a pattern it reacts to rather
# than the finding. Every found image is therefore also judged by the **independent
# evaluator** of the evaluation chapter (trained on the phantom cohort of new patients, never
# used by the search), and the book reports both rates. At the end, the explorer a student
# uses: direction sliders, a finding picker with a severity slider, a patient series, and both
# classifiers' opinion of every picture.

# %% tags=["parameters"]
# Run
profile: str = "tiny"  # profile of the PGGAN, search-classifier and evaluator sections
data_dir: str = "../data/tiny"  # data directory written by `xrg data build`
pggan_dir: str = "../runs/tiny/pggan"  # the PGGAN run (trained when missing)
search_dir: str = "../runs/tiny/search"  # the search classifiers (trained when missing)
experiment_dir: str = "../runs/tiny/experiments"  # holds the evaluators, shared with chapter 05
seed: int = 0  # global seed; latents of every search and sample derive from it
# Evaluation
num_generated: int = 64  # uncurated PGGAN samples for the FID and the prevalence
min_group: int = 8  # smallest group a Table 4.1 FID is computed on
searches_per_class: int = 8  # searches per class, classifier and regulariser
search_steps: int = 30  # the step budget of every search
search_lr: float = 0.05  # the search's step size
gan_train_per_class: int = 8  # searches per class for the GAN-train archive
gan_train_uncurated: int = 16  # uncurated samples added to the archive
gan_train_epochs: int = 2  # epochs of both GAN-train classifiers
min_evaluator_auroc: float = 0.8  # a class is offered only where the evaluator tells it apart this well
min_test_positives: int = 20  # ... and the test split has this many positives
# Explorer
num_directions: int = 6  # latent direction sliders
image_width: int = 256  # display width of the explorer's image
timing_repeats: int = 3  # times each explorer response is timed

# %% tags=["hide-input"]
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display
from myst_nb import glue

from xrg.data.datasets import XRayPairDataset
from xrg.data.findings import FINDING_KINDS
from xrg.errors import XrgError
from xrg.eval.evaluators import EvaluatorConfig
from xrg.eval.judge import judgeable_findings
from xrg.latent.app import LatentApp
from xrg.latent.evaluate import (
    evaluator_features,
    fid_matrix,
    group_fids,
    label_prevalence,
    rate_difference,
    search_lift,
    search_rates,
)
from xrg.latent.explorer import LatentExplorer
from xrg.latent.figures import plot_fid_map, plot_image_rows, plot_prevalence, plot_trajectory
from xrg.latent.gan_train import gan_train_table, synthetic_archive
from xrg.latent.sample import evaluator_judge, judged_searches
from xrg.latent.search import TRUNCATION, search
from xrg.latent.timing import time_latent_responses
from xrg.models.pggan import PGGAN, truncated_normal
from xrg.models.xraygan import to_image_range
from xrg.notebook import check_params, format_interval, setup
from xrg.profiles import load_profile
from xrg.train.evaluators import ensure_evaluators
from xrg.train.pathology import load_search_classifier
from xrg.train.pggan import PGGANTrainConfig
from xrg.train.runs import ensure_pggan_run, ensure_search_classifier

run = setup(
    seed=seed,
    profile=profile,
    params=dict(
        data_dir=data_dir, pggan_dir=pggan_dir, search_dir=search_dir, experiment_dir=experiment_dir,
        num_generated=num_generated, min_group=min_group, searches_per_class=searches_per_class,
        search_steps=search_steps, search_lr=search_lr, gan_train_per_class=gan_train_per_class,
        gan_train_uncurated=gan_train_uncurated, gan_train_epochs=gan_train_epochs,
        min_evaluator_auroc=min_evaluator_auroc, min_test_positives=min_test_positives,
        num_directions=num_directions, image_width=image_width, timing_repeats=timing_repeats,
    ),
)  # fmt: skip
check_params(
    data_dir=(data_dir, "existing_dir"),
    pggan_dir=(pggan_dir, str),
    search_dir=(search_dir, str),
    experiment_dir=(experiment_dir, str),
    num_generated=(num_generated, range(8, 100_001)),
    min_group=(min_group, range(4, 100_001)),
    searches_per_class=(searches_per_class, range(1, 10_001)),
    search_steps=(search_steps, range(1, 10_001)),
    gan_train_per_class=(gan_train_per_class, range(1, 10_001)),
    gan_train_uncurated=(gan_train_uncurated, range(0, 100_001)),
    gan_train_epochs=(gan_train_epochs, range(1, 1001)),
    min_test_positives=(min_test_positives, range(1, 100_001)),
    num_directions=(num_directions, range(1, 17)),
    image_width=(image_width, range(32, 1025)),
    timing_repeats=(timing_repeats, range(1, 101)),
)
if not (0 < search_lr <= 10 and 0 <= min_evaluator_auroc <= 1):
    raise ValueError(
        f"need 0 < search_lr <= 10 and min_evaluator_auroc in [0, 1], got {search_lr}, {min_evaluator_auroc}"
    )
loaded = load_profile(profile)
checkpoint = ensure_pggan_run(profile, data_dir, pggan_dir)
densenet_path = ensure_search_classifier(profile, data_dir, search_dir, "densenet")
critic_path = ensure_search_classifier(profile, data_dir, search_dir, "critic", pggan_checkpoint=checkpoint)
evaluators = ensure_evaluators(EvaluatorConfig.from_profile(loaded), data_dir, Path(experiment_dir) / "evaluators")
model = PGGAN.from_checkpoint(checkpoint).for_inference()
classifiers = {
    "DenseNet-121": load_search_classifier(densenet_path),
    "PGGAN critic": load_search_classifier(critic_path),
}
model_view = PGGANTrainConfig.from_profile(loaded).view  # the view PGGAN was trained on (frontal unless set)
judge, cohort_auroc = evaluator_judge(Path(experiment_dir) / "evaluators", view=model_view)
final = model.config.final_size
model

# %% [markdown]
# ## What PGGAN learned
#
# First the training curve of the run (the critic's Wasserstein estimate at the end of every
# epoch, one colour per resolution: {glue:text}`pggan_train_min` minutes of training in all),
# then test renders above uncurated samples of the moving-average generator at the
# final resolution (truncation 0.7, the search's prior).

# %% tags=["hide-input"]
metrics = [json.loads(line) for line in (Path(pggan_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
train_rows = [row for row in metrics if row.get("kind") == "pggan" and row.get("wasserstein") is not None]
train_seconds = sum(float(row.get("seconds") or 0) for row in train_rows)  # one row per epoch
glue("pggan_final_size", final, display=False)
glue("pggan_train_min", round(train_seconds / 60, 2), display=False)
glue("pggan_train_s", train_seconds, display=False)
test = XRayPairDataset(data_dir, "test", image_size=final, max_sentences=1, max_words=1)
test_images = torch.stack([test[i][model_view] for i in range(len(test))])
test_labels = torch.stack([test[i]["labels"] for i in range(len(test))])
test_patients = [test.cases[i].patient_id for i in range(len(test))]
z_uncurated = truncated_normal(
    (num_generated, model.config.latent_dim), TRUNCATION, torch.Generator().manual_seed(seed)
)
with torch.no_grad():
    generated = torch.cat(
        [to_image_range(model.generate(z_uncurated[i : i + 32])) for i in range(0, num_generated, 32)]
    )
    generated = generated.clamp(0, 1)
fig, ax = plt.subplots(figsize=(7, 2.6))
for size in sorted({row["image_size"] for row in train_rows}):
    points = [(row["step"], row["wasserstein"]) for row in train_rows if row["image_size"] == size]
    ax.plot(*zip(*points), marker="o", ms=3, lw=0.8, label=f"{size}²")
ax.set_xlabel("step (one point per epoch)")
ax.set_ylabel("critic: D(fake) − D(real)")
ax.legend(frameon=False, fontsize=7, ncol=4)
plt.show()
plot_image_rows({"test renders": test_images[:8], "PGGAN samples (moving average, ψ = 0.7)": generated[:8]})
plt.show()

# %% [markdown]
# ## The classifiers, and which findings are offered
#
# Two search classifiers are trained on the train split only, with the class-weighted
# cross-entropy of §3.3 and the learning rate reduced on a validation macro-AUROC plateau;
# their per-class thresholds are the validation Youden J. The DenseNet-121 looks at the image
# area-averaged to its input size; the critic variant (§3.4) is the trained PGGAN critic with
# a linear head, at the GAN's full resolution. The table gives their **validation** AUROC per
# finding and, last, the evaluator's AUROC on its held-out cohort. A class is offered (in the
# search tables and the explorer) only where the evaluator tells it apart
# (AUROC ≥ {glue:text}`latent_min_auroc`) and the test split has positives: a search "for" a
# finding the judge cannot see could never be confirmed, and would say nothing.

# %% tags=["hide-input"]
val_auroc = {}
for name, path in (("DenseNet-121", densenet_path), ("PGGAN critic", critic_path)):
    stored = torch.load(path, map_location="cpu", weights_only=True)["metrics"]
    val_auroc[name] = stored["val_auroc"]
test_positives = {name: int(test_labels[:, k].sum()) for k, name in enumerate(FINDING_KINDS)}
offered, left_out = judgeable_findings(cohort_auroc, test_positives, min_evaluator_auroc, min_test_positives)
glue("latent_min_auroc", min_evaluator_auroc, display=False)
glue("latent_num_offered", len(offered), display=False)
glue("latent_offered", ", ".join(n.replace("_", " ") for n in offered) or "none", display=False)
classifier_table = pd.DataFrame(
    {
        "DenseNet-121 val AUROC": {n: val_auroc["DenseNet-121"].get(n) for n in FINDING_KINDS},
        "critic val AUROC": {n: val_auroc["PGGAN critic"].get(n) for n in FINDING_KINDS},
        "evaluator cohort AUROC": cohort_auroc,
        "test positives": test_positives,
        "offered": {n: "yes" if n in offered else left_out.get(n, "") for n in FINDING_KINDS},
    }
)
for name in ("DenseNet-121", "PGGAN critic"):
    glue(f"latent_val_macro_{name.split()[0].lower().replace('-', '')}", val_auroc[name].get("macro"), display=False)
display(Markdown(f"Offered: **{', '.join(offered) or 'none'}** ({len(offered)} of {len(FINDING_KINDS)})."))
classifier_table.round(3)

# %% [markdown]
# ## Table 4.1: FIDs between groups of real images, with their floors
#
# All FIDs here are in the evaluator's feature space (its pooled DenseNet features) on the
# real **test** renders of the frontal view. "vs no finding" is the FID between the images
# with no finding and those with the finding; the floor of a row is the FID between two
# disjoint halves of the same group, which grows as a group shrinks: a distance means
# something only well above its floor. The stratified row splits all images into two
# patient-disjoint halves with the same label mix (the dissertation's lower bound); the last
# row is all real images against the uncurated PGGAN samples.

# %% tags=["hide-input"]
features = evaluator_features(evaluators.classifier, test_images, evaluators.image_size)
generated_features = evaluator_features(evaluators.classifier, generated, evaluators.image_size)
fids = group_fids(
    features, test_labels, FINDING_KINDS, test_patients, generated_features, min_group=min_group, seed=seed
)
fid_rows = {name: {"images": g["n"], "FID vs no finding": g["fid"], "floor (two halves)": g["floor"]}
            for name, g in fids["groups"].items()}  # fmt: skip
fid_rows["stratified halves (all)"] = {
    "images": len(features),
    "FID vs no finding": None,
    "floor (two halves)": fids["stratified"],
}
fid_rows["real vs PGGAN samples"] = {
    "images": num_generated,
    "FID vs no finding": fids["synthetic"],
    "floor (two halves)": None,
}
glue("latent_fid_stratified", round(fids["stratified"], 2), display=False)
glue("latent_fid_synthetic", round(fids["synthetic"], 1), display=False)
if fids["left_out"]:
    display(Markdown("Left out: " + "; ".join(f"{k} ({v})" for k, v in fids["left_out"].items())))
pd.DataFrame(fid_rows).T.round(2)

# %% [markdown]
# ## The findings on a map (Figures 4.3 and 4.4)
#
# The pairwise FIDs of the groups above, placed in two dimensions by metric MDS and
# clustered by average linkage (scikit-learn and scipy). Findings the renderer draws in the
# same place (the lower lungs, the heart border) should sit together.

# %% tags=["hide-input"]
try:
    matrix = fid_matrix(features, test_labels, FINDING_KINDS, min_group=min_group, seed=seed)
except XrgError as error:  # fewer than three groups large enough (a tiny test split)
    matrix = None
    display(Markdown(f"No map: {error}"))
if matrix is not None:
    plot_fid_map(matrix)
    plt.show()

# %% [markdown]
# ## Label prevalence of uncurated samples (Figure 4.5)
#
# The share of images the evaluator calls positive for each finding at its cohort
# thresholds, for the real test renders and for the uncurated PGGAN samples, with bootstrap
# 95% intervals over images. An unconditional GAN that learned the data draws findings about
# as often as the data has them.

# %% tags=["hide-input"]
thresholds = {name: float(torch.sigmoid(t)) for name, t in zip(judge.class_names, judge.thresholds)}
with torch.no_grad():
    real_probs = torch.sigmoid(judge.logits(test_images * 2 - 1))
    generated_probs = torch.sigmoid(judge.logits(generated * 2 - 1))
prevalence_real = label_prevalence(real_probs, thresholds, FINDING_KINDS, seed=seed)
prevalence_generated = label_prevalence(generated_probs, thresholds, FINDING_KINDS, seed=seed)
plot_prevalence(prevalence_real, prevalence_generated, FINDING_KINDS)
plt.show()

# %% [markdown]
# ## Latent class optimisation: success, and what the evaluator confirms
#
# For every offered class, {glue:text}`latent_searches_per_class` searches per search
# classifier, each from its own latent of the truncated prior, with a budget of
# {glue:text}`latent_search_steps` steps. **Success** is the share of searches whose target
# logit passed the search classifier's threshold; **confirmed** the share whose found image
# the independent evaluator also calls positive for the class. "norm" adds a penalty on ‖z‖²
# that keeps the latent near the prior (the regulariser the dissertation lacked). A high
# success with a low confirmed rate is a classifier fooled by the search.
#
# The **controls** are the starting images themselves, before any step: "at start" columns
# say how often the search classifier and the evaluator already called them positive. A
# search earns credit only for the confirmed rate above the evaluator's rate at the start
# (the "lift"); a generator whose every sample already looks like every finding to the
# classifiers passes at step 0 and lifts nothing.

# %% tags=["hide-input"]
glue("latent_searches_per_class", searches_per_class, display=False)
glue("latent_search_steps", search_steps, display=False)
rate_rows, all_lines = [], {}


def glue_key(classifier_name, regulariser):
    return f"{classifier_name.split()[0].lower().replace('-', '')}_{regulariser}"


for classifier_name, classifier in classifiers.items():
    for regulariser in ("none", "norm"):
        lines = judged_searches(model, classifier, offered, judge, n=searches_per_class, seed=seed,
                                max_steps=search_steps, lr=search_lr, regulariser=regulariser)  # fmt: skip
        all_lines[classifier_name, regulariser] = lines
        lift = search_lift(lines, seed=seed) if offered else {}
        for name, rates in search_rates(lines).items():
            rate_rows.append({"classifier": classifier_name, "regulariser": regulariser, "finding": name, **rates,
                              "lift": lift[name]["value"], "lift low": lift[name]["ci"][0],
                              "lift high": lift[name]["ci"][1], "verdict": lift[name]["verdict"]})  # fmt: skip
        key = glue_key(classifier_name, regulariser)
        macro = lift.get("macro", {"value": None, "ci": [None, None], "verdict": "not significant"})
        glue(f"latent_lift_{key}", None if macro["value"] is None else round(macro["value"], 3), display=False)
        glue(f"latent_lift_ci_{key}", format_interval(macro), display=False)
        glue(f"latent_lift_verdict_{key}", macro["verdict"], display=False)
rates_table = pd.DataFrame(rate_rows)
if len(rates_table):
    for (classifier_name, regulariser), group in rates_table.groupby(["classifier", "regulariser"]):
        key = glue_key(classifier_name, regulariser)
        for column, name in (("success_rate", "success"), ("confirmed_rate", "confirmed"),
                             ("passed_at_start_rate", "passed_at_start"),
                             ("confirmed_at_start_rate", "confirmed_at_start")):  # fmt: skip
            glue(f"latent_{name}_{key}", round(float(group[column].mean()), 3), display=False)
        steps = group["median_steps"].dropna()
        glue(f"latent_median_steps_{key}", float(steps.median()) if len(steps) else None, display=False)
    display(rates_table.set_index(["classifier", "regulariser", "finding"]).round(3))
    # the dissertation's question: does the critic-based classifier converge more often?
    names = list(classifiers)
    comparison = pd.DataFrame([
        {"rate": key, "regulariser": regulariser, "classifiers": f"{names[1]} − {names[0]}",
         "difference": d["value"], "low": d["ci"][0], "high": d["ci"][1], "verdict": d["verdict"]}
        for regulariser in ("none", "norm") for key in ("success", "confirmed")
        for d in [rate_difference(all_lines[names[1], regulariser], all_lines[names[0], regulariser], key=key,
                                  seed=seed)]
    ])  # fmt: skip
    for row in comparison.itertuples():
        glue(f"latent_critic_minus_densenet_{row.rate}_{row.regulariser}", round(row.difference, 3), display=False)
        glue(f"latent_critic_minus_densenet_{row.rate}_{row.regulariser}_verdict", row.verdict, display=False)
    display(comparison.set_index(["rate", "regulariser"]).round(3))
else:
    for rate in ("success", "confirmed"):
        for regulariser in ("none", "norm"):
            glue(f"latent_critic_minus_densenet_{rate}_{regulariser}", None, display=False)
            glue(f"latent_critic_minus_densenet_{rate}_{regulariser}_verdict", "not significant", display=False)
    display(Markdown("No class is offered on this data: there is nothing the evaluator could confirm."))

# %% [markdown]
# Read as a result: with the DenseNet classifier and no regulariser, the searches' macro lift
# is {glue:text}`latent_lift_ci_densenet121_none` (with its 95% interval, a stratified
# bootstrap over searches):
# **{glue:text}`latent_lift_verdict_densenet121_none`**; with the critic-based classifier
# {glue:text}`latent_lift_ci_pggan_none`:
# **{glue:text}`latent_lift_verdict_pggan_none`**. The critic-based classifier's success rate
# minus the DenseNet's is {glue:text}`latent_critic_minus_densenet_success_none`
# (**{glue:text}`latent_critic_minus_densenet_success_none_verdict`**), its confirmed rate
# {glue:text}`latent_critic_minus_densenet_confirmed_none`
# (**{glue:text}`latent_critic_minus_densenet_confirmed_none_verdict`**). These intervals are
# over searches of one trained PGGAN and one pair of classifiers: training seeds are not
# replicated here, so even a "lift" is a statement about this run, and an interval that
# contains 0 is not a finding.

# %% [markdown]
# One search of the first offered class with the DenseNet classifier: the image at evenly
# spaced steps, and every finding's logit along the way (the thick line is the target; the
# other findings are free to move).

# %% tags=["hide-input"]
if offered:
    example = search(model.generate, model.config.latent_dim, classifiers["DenseNet-121"], offered[0], n=1,
                     seed=seed, max_steps=search_steps, lr=search_lr)[0]  # fmt: skip
    plot_trajectory(example)
    plt.show()

# %% [markdown]
# ## GAN-train: what a synthetic archive teaches
#
# A synthetic labelled archive made by the search (the found images of every offered class,
# labelled with every class the DenseNet search classifier puts above its threshold, plus
# uncurated samples) trains a DenseNet-121; another is trained on as many real train renders.
# Both are tested on the real test renders. An archive that carries the findings teaches
# nearly what the real one does; AUROCs near 0.5 mean it taught the search classifier's
# patterns, not the findings.

# %% tags=["hide-input"]
if offered:
    archive = synthetic_archive(model, classifiers["DenseNet-121"], offered, per_class=gan_train_per_class,
                                uncurated=gan_train_uncurated, seed=seed + 1, max_steps=search_steps, lr=search_lr)  # fmt: skip
    train = XRayPairDataset(data_dir, "train", image_size=final, max_sentences=1, max_words=1)
    real_train = (torch.stack([train[i][model_view] for i in range(len(train))]),
                  torch.stack([train[i]["labels"] for i in range(len(train))]))  # fmt: skip
    gan_train = gan_train_table(archive, real_train, (test_images, test_labels), offered,
                                size=evaluators.image_size, epochs=gan_train_epochs, seed=seed)  # fmt: skip
    glue("latent_gan_train_auroc", gan_train["mean"]["gan_train_auroc"], display=False)
    glue("latent_real_train_auroc", gan_train["mean"]["real_train_auroc"], display=False)
    glue("latent_archive_size", len(archive.images), display=False)
    display(Markdown(f"Archive: {len(archive.images)} images ({sum(archive.found.values())} found by "
                     f"{sum(archive.attempts.values())} searches, {gan_train_uncurated} uncurated)."))  # fmt: skip
    display(pd.DataFrame(gan_train).T.round(3))
else:
    glue("latent_gan_train_auroc", None, display=False)
    glue("latent_real_train_auroc", None, display=False)
    glue("latent_archive_size", 0, display=False)

# %% [markdown]
# ## The explorer
#
# From the top: a patient seed and **New patient** (the truncation slider sets how far from the
# average chest the patient may be), **Undo**; one slider per latent direction (GANSpace: the
# principal components of the generator's first feature map, mapped back to latent
# directions, the first changing the picture most); the finding picker with the severity
# (a target probability, or the class's own threshold), the regulariser, **Find** (runs the
# search from the current patient and shows its trajectory) and **Patient series** (small
# moves around the current latent that keep the finding: the same patient, slightly
# different). Beside the image, both classifiers' probabilities, ticked where they pass
# their thresholds: the search classifier on the left, the independent evaluator on the right.
#
# The app runs live in JupyterLab (`make lab`). In the static book the widgets show the
# state they were left in, and the figures after them are snapshots of the same app driven
# from code.

# %% tags=["hide-input"]
explorer = LatentExplorer(model, classifiers["DenseNet-121"], evaluator=judge, num_directions=num_directions,
                          direction_seed=seed, search_steps=search_steps, search_lr=search_lr)  # fmt: skip
app = LatentApp(explorer, classes=offered or list(FINDING_KINDS), image_width=image_width)
app.new_patient(seed)
display(app.widget)

# %% [markdown]
# ### Snapshots: one control at a time
#
# Each row starts from the same patient and moves one control: the first two directions
# at −2 and +2, a lower and a higher truncation, a search for the first offered class, and a
# patient series around what it found. Under each image, the target class's probability by
# the search classifier and by the evaluator.

# %% tags=["hide-input"]
target = app.classes[0]
snap = LatentExplorer(model, classifiers["DenseNet-121"], evaluator=judge, num_directions=num_directions,
                      direction_seed=seed, search_steps=search_steps, search_lr=search_lr)  # fmt: skip


def caption(view):
    p = float(torch.sigmoid(torch.tensor(view.search_logits[target])))
    q = float(torch.sigmoid(torch.tensor(view.evaluator_logits[target]))) if view.evaluator_logits else float("nan")
    return f"{view.action}\n{target}: search {p:.2f} / evaluator {q:.2f}"


views = [snap.new_patient(seed)]
for k in range(min(2, num_directions)):
    for value in (-2.0, 2.0):
        offsets = [0.0] * num_directions
        offsets[k] = value
        views.append(snap.move(offsets))
        snap.undo()
views += [snap.new_patient(seed, truncation=0.3), snap.new_patient(seed, truncation=1.5)]
snap.new_patient(seed)
found = snap.find(target)
views.append(found)
series = snap.series(target, count=4)
fig, axes = plt.subplots(1, len(views) + 4, figsize=(1.9 * (len(views) + 4), 2.8))
for ax, view in zip(axes, views):
    ax.imshow(view.image, cmap="gray", vmin=0, vmax=1)
    ax.set_title(caption(view), fontsize=6)
    ax.axis("off")
for i, ax in enumerate(axes[len(views) :]):
    ax.imshow(to_image_range(series.series.images[i : i + 1])[0, 0].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"series {i + 1}: {'keeps' if bool(series.series.kept[i]) else 'loses'} {target}", fontsize=6)
    ax.axis("off")
fig.tight_layout()
plt.show()

# %% [markdown]
# ### How fast it answers
#
# Every response regenerates the image at {glue:text}`pggan_final_size`² on the CPU and
# runs both classifiers; a search runs up to the step budget, so it is timed on its own.

# %% tags=["hide-input"]
timing = time_latent_responses(snap, target, repeats=timing_repeats, seed=seed)
timing_table = (
    pd.DataFrame(
        [
            {"response": k, "n": len(v), "median s": np.median(v), "p90 s": np.percentile(v, 90)}
            for k, v in timing.items()
        ]
    )
    .set_index("response")
    .round(3)
)
interactive = [t for k, v in timing.items() if k != "find" for t in v]
glue("latent_response_s", float(np.median(interactive)), display=False)
glue("latent_response_p90_s", float(np.percentile(interactive, 90)), display=False)
glue("latent_find_s", float(np.median(timing["find"])), display=False)
timing_table

# %% [markdown]
# The app above is left after a search for the first offered class, so the saved page shows
# a trajectory; in JupyterLab, **Undo** goes back to the patient.

# %% tags=["hide-input"]
_ = app.find(target)

# %% tags=["remove-input"]
# Provenance: wall time of this notebook, recorded for the book's run table.
run.finish()
