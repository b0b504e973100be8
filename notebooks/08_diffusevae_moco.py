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
# # DiffuseVAE guided by MoCo
#
# The whitepaper's system (§3): a **VAE** learns a low-dimensional code of the frontal image and
# draws blurry chests; a **DDPM** conditioned on the VAE's output refines them (DiffuseVAE's
# generator-refiner); a **MoCo** representation model, trained with an auxiliary **clustering loss**
# that groups images by their findings, fine-tunes the DDPM through
# $L = L_\text{diffusion} + \lambda\,(1 - \cos(\text{MoCo}(x), \text{MoCo}(\hat x_0)))$ (§3.4).
# Beyond the whitepaper, which names them future work: every network here is **conditioned** on a
# finding set (multi-disease generation), with classifier-free guidance, and a second model reads
# the **report text** through the hierarchical report encoder (prompt-based generation), so that it
# can stand beside XRayGAN on the same test reports.
#
# Everything is judged by the book's independent evaluator (chapter 5's DenseNet-121, trained on
# the rendered cohort), beside the controls every table here carries: the population-mean image,
# retrieval of a training image, and the real test images.

# %% tags=["parameters"]
# Run
profile: str = "tiny"  # profile of the diffusevae and evaluators sections
data_dir: str = "../data/tiny"  # data directory written by `xrg data build`
diffusevae_dir: str = "../runs/tiny/diffusevae"  # the DiffuseVAE runs (trained when missing)
experiment_dir: str = "../runs/tiny/experiments"  # holds the evaluators, shared with chapter 05
run_dir: str = "../runs/tiny/xraygan"  # the XRayGAN run of the side-by-side comparison
seed: int = 0  # global seed; every sample derives from it
# Evaluation
samples_per_condition: int = 64  # samples of each condition in the condition table
guidance: float = 1.0  # classifier-free guidance scale of the scored samples (1: conditional)
report_vae_epochs: int = 2  # the report-prompted model's VAE epochs, after the finding-set model's VAE
report_ddpm_epochs: int = 6  # ... and its DDPM epochs, after the finding-set model's DDPM
report_cases: int = 200  # test reports of the XRayGAN comparison
min_evaluator_auroc: float = 0.8  # a finding is scored only where the evaluator tells it apart this well
min_test_positives: int = 20  # ... and the test split has this many cases with it
# Sampler settings, chosen on the validation split, and speed
speed_steps: list = [5, 10, 25, 50]  # DDIM step counts timed
sweep_steps: list = [5, 10, 25]  # DDIM step counts tried on validation, for every model
sweep_etas: list = [0.0, 1.0]  # DDIM η tried on validation (0: deterministic, 1: as stochastic as ancestral)
sweep_samples: int = 48  # validation cases of the sweep (one image each, under its findings or report)
sweep_tolerance: float = 0.1  # the fewest steps whose validation FID is within this share of the best
speed_images: int = 16  # images per timed DDIM batch
ancestral_images: int = 4  # images of the timed ancestral batch (every one of the T timesteps)
# Examples
prompt_report: str = (
    "FINDINGS: The heart is enlarged. Small left pleural effusion. IMPRESSION: Cardiomegaly with effusion."
)

# %% tags=["hide-input"]
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display
from myst_nb import glue

from xrg.data.findings import FINDING_KINDS
from xrg.eval.diffusion import (
    WHITEPAPER_CONDITIONS,
    Judge,
    RealImages,
    case_kinds,
    case_quality,
    category_separation,
    condition_batch,
    condition_table,
    embeddings,
    feature_distance,
    generate,
    load_stage,
    reconstruct,
    report_detection,
    representation_scores,
    retrieve_by_labels,
    sampling_speed,
    scorable_conditions,
)
from xrg.eval.evaluators import EvaluatorConfig
from xrg.eval.judge import judgeable_findings
from xrg.latent.sample import evaluator_judge
from xrg.models.moco import CLUSTER_CATEGORIES, finding_category
from xrg.notebook import check_params, format_interval, read_metrics, setup
from xrg.pipelines import DiffuseVAEPipeline, XRayGANPipeline, prompt_findings
from xrg.profiles import load_profile
from xrg.train.diffusevae import DiffuseVAETrainConfig
from xrg.train.evaluators import ensure_evaluators
from xrg.train.runs import ensure_diffusevae_run

run = setup(
    seed=seed,
    profile=profile,
    params=dict(
        data_dir=data_dir, diffusevae_dir=diffusevae_dir, experiment_dir=experiment_dir, run_dir=run_dir,
        samples_per_condition=samples_per_condition, guidance=guidance,
        report_vae_epochs=report_vae_epochs, report_ddpm_epochs=report_ddpm_epochs,
        report_cases=report_cases, min_evaluator_auroc=min_evaluator_auroc, min_test_positives=min_test_positives,
        speed_steps=speed_steps, sweep_steps=sweep_steps, sweep_etas=sweep_etas, sweep_samples=sweep_samples, sweep_tolerance=sweep_tolerance,
        speed_images=speed_images, ancestral_images=ancestral_images,
    ),
)  # fmt: skip
check_params(
    data_dir=(data_dir, "existing_dir"),
    diffusevae_dir=(diffusevae_dir, str),
    experiment_dir=(experiment_dir, str),
    run_dir=(run_dir, "existing_dir"),
    samples_per_condition=(samples_per_condition, range(4, 10_001)),
    sweep_samples=(sweep_samples, range(4, 10_001)),
    ancestral_images=(ancestral_images, range(1, 1025)),
    report_cases=(report_cases, range(2, 100_001)),
    min_test_positives=(min_test_positives, range(1, 100_001)),
    speed_images=(speed_images, range(1, 1025)),
    report_vae_epochs=(report_vae_epochs, range(1, 10_001)),
    report_ddpm_epochs=(report_ddpm_epochs, range(1, 10_001)),
)
if not (
    0 <= guidance <= 100
    and 0 <= min_evaluator_auroc <= 1
    and 0 <= sweep_tolerance <= 1
    and speed_steps
    and all(int(s) >= 1 for s in speed_steps)
    and sweep_steps
    and all(int(s) >= 1 for s in sweep_steps)
    and sweep_etas
    and all(0 <= float(e) <= 1 for e in sweep_etas)
):
    raise ValueError(f"need guidance in [0, 100], min_evaluator_auroc and sweep_tolerance in [0, 1], speed_steps "
                     f"and sweep_steps (>= 1) and sweep_etas (in [0, 1]) not empty; got {guidance}, "
                     f"{min_evaluator_auroc}, {sweep_tolerance}, {speed_steps}, {sweep_steps}, {sweep_etas}")  # fmt: skip
loaded = load_profile(profile)
config = DiffuseVAETrainConfig.from_profile(loaded)
root = Path(diffusevae_dir)
# the main model (conditioned on the finding set), its ablation without the clustering loss (a MoCo
# trained without it fine-tunes the same DDPM), and the report-prompted model (VAE + DDPM), which
# starts from the main model's VAE and DDPM (all but the condition encoder) and trains further
main_runs = ensure_diffusevae_run(profile, data_dir, root / "findings")
ablation_runs = ensure_diffusevae_run(
    profile, data_dir, root / "no_clustering", stages=("moco", "finetune"), overrides={"moco": {"cluster_weight": 0.0}},
    ddpm_run=root / "findings",
)  # fmt: skip
report_runs = ensure_diffusevae_run(
    profile, data_dir, root / "report", stages=("vae", "ddpm"),
    overrides={"condition": {"mode": "report"}, "vae": {"num_epochs": report_vae_epochs},
               "ddpm": {"num_epochs": report_ddpm_epochs}, "init_from": str(root / "findings")},
)  # fmt: skip
evaluators = ensure_evaluators(EvaluatorConfig.from_profile(loaded), data_dir, Path(experiment_dir) / "evaluators")
train_seconds = {
    name: json.loads((root / name / "train_seconds.json").read_text())
    for name in ("findings", "no_clustering", "report")
}
main_seconds = sum(train_seconds["findings"].values())
glue("dv_train_s", main_seconds, display=False)
glue("dv_train_min", main_seconds / 60, display=False)
for stage, seconds in train_seconds["findings"].items():
    glue(f"dv_train_{stage}_s", seconds, display=False)
glue("dv_image_size", config.image_size, display=False)
glue("dv_train_cases", config.train_cases, display=False)
pd.DataFrame(train_seconds).T.round(1).rename_axis("run")

# %% [markdown]
# The seconds each stage of each run took to train on this machine (`ensure_diffusevae_run` loads a
# finished stage instead of training it again, and keeps the time it took).
#
# ## Training
#
# Each stage logs one row per epoch: the VAE's ELBO terms, MoCo's InfoNCE (chance is
# $\ln(K+1)$ for a queue of $K$ negatives) and clustering loss, the DDPM's ε error, and for the
# generating stages the between-image variation of validation samples beside that of the real
# validation images (a collapse to one image would show as a variation near 0).

# %% tags=["hide-input"]
curves = {stage: pd.DataFrame(read_metrics(root / "findings" / stage)) for stage in ("vae", "moco", "ddpm", "finetune")}
fig, axes = plt.subplots(1, 4, figsize=(15, 3))
axes[0].plot(curves["vae"]["epoch"] + 1, curves["vae"]["reconstruction"], marker="o", label="reconstruction")
axes[0].plot(curves["vae"]["epoch"] + 1, curves["vae"]["kl"], marker="o", label="KL")
axes[0].set(title="VAE (ELBO terms, per image)", xlabel="epoch", yscale="log")
axes[1].plot(curves["moco"]["epoch"] + 1, curves["moco"]["moco_loss"], label="InfoNCE")
axes[1].axhline(np.log(config.moco.model.queue_size + 1), color="k", ls=":", lw=1, label="chance")
axes[1].plot(curves["moco"]["epoch"] + 1, curves["moco"]["cluster_loss"], label="clustering")
axes[1].set(title="MoCo", xlabel="epoch")
diffusion = pd.concat([curves["ddpm"].assign(stage="ddpm"), curves["finetune"].assign(stage="finetune")])
diffusion["epoch_all"] = range(1, len(diffusion) + 1)
axes[2].plot(diffusion["epoch_all"], diffusion["diffusion_loss"], marker=".")
axes[2].axvline(len(curves["ddpm"]) + 0.5, color="k", ls=":", lw=1)
axes[2].set(title="DDPM ε error (then fine-tuning)", xlabel="epoch")
axes[3].plot(diffusion["epoch_all"], diffusion["variation"], label="samples")
axes[3].plot(diffusion["epoch_all"], diffusion["variation_real"], "k:", label="real")
axes[3].set(title="between-image variation", xlabel="epoch")
for ax in (axes[0], axes[1], axes[3]):
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
glue("dv_moco_final_infonce", float(curves["moco"]["moco_loss"].iloc[-1]), display=False)
glue("dv_moco_chance", float(np.log(config.moco.model.queue_size + 1)), display=False)

# %% [markdown]
# ## Sampler settings, chosen on the validation split
#
# How many DDIM steps, and how stochastic (η), are decisions, so they are made on the validation
# images and never on the test images the tables report — and for **every model on its own**,
# since models trained differently need different samplers (before fine-tuning, deterministic DDIM
# at few steps draws noise where the fine-tuned model does not). For every step count in
# `sweep_steps` and every η in `sweep_etas`, each model draws one image for each of the first
# `sweep_samples` validation cases, under that case's finding set (the report model: its report),
# with the same noise for every setting, scored against the validation images: the FID in the
# evaluator's features, and the detection − false-alarm rate of the evaluator's calls against the
# cases' findings. Each model then samples with the **fewest steps whose FID is within
# `sweep_tolerance` of its best** (the better η at that step count): sampling time grows with the
# steps, and a difference inside the tolerance is within the noise of a few dozen samples.

# %% tags=["hide-input"]
model = load_stage(root / "findings", "finetune")
before = load_stage(root / "findings", "ddpm")
ablation = load_stage(root / "no_clustering", "finetune")
report_model = load_stage(root / "report", "ddpm")
moco = load_stage(root / "findings", "moco")
moco_plain = load_stage(root / "no_clustering", "moco")
size, view = model.image_size, model.view
train = RealImages.load(data_dir, "train", size, view)
val = RealImages.load(data_dir, "val", size, view)
test = RealImages.load(data_dir, "test", size, view)
judge_network, cohort_auroc = evaluator_judge(Path(experiment_dir) / "evaluators", view)
positives = {kind: int(test.labels[:, k].sum()) for k, kind in enumerate(FINDING_KINDS)}
judgeable, left_out = judgeable_findings(cohort_auroc, positives, min_evaluator_auroc, min_test_positives)
judge = Judge.from_classifier(judge_network, judgeable)

swept_steps = sorted({int(v) for v in sweep_steps if int(v) <= model.schedule.timesteps})
etas = sorted({float(e) for e in sweep_etas})


def ddim_sampler(network, steps, eta):
    def make(kinds, count, sample_seed):
        batch = condition_batch(network, [kinds] * count)
        return generate(network, batch, count, steps=steps, guidance=guidance, eta=eta, seed=sample_seed)

    return make


def choose_sampler(network, texts=None):
    """The validation sweep of one model, and its (steps, η) by the rule above."""
    count = min(sweep_samples, len(val.images))
    batch = condition_batch(network, case_kinds(val.labels[:count]), texts=None if texts is None else texts[:count])
    records = []
    for steps in swept_steps:
        for eta in etas:
            images = generate(network, batch, count, steps=steps, guidance=guidance, eta=eta, seed=seed + 500)
            found = case_quality(images, val.labels[:count], judge, val, seed=seed)
            records.append({"steps": steps, "eta": eta, "FID": found["fid"],
                            "detection − false alarm": found["detection"]["value"]})  # fmt: skip
    table = pd.DataFrame(records).set_index(["steps", "eta"])
    within = table[table["FID"] <= float(table["FID"].min()) * (1 + sweep_tolerance)]
    steps = int(within.index.get_level_values("steps").min())
    return table, (steps, float(within.loc[steps]["FID"].idxmin()))


sweeps, chosen = {}, {}
for name, network, texts in (("fine-tuned", model, None), ("before fine-tuning", before, None),
                             ("MoCo without clustering", ablation, None), ("report encoder", report_model, val.texts)):  # fmt: skip
    sweeps[name], chosen[name] = choose_sampler(network, texts)
eval_steps, eval_eta = chosen["fine-tuned"]
for key, name in (("", "fine-tuned"), ("_before", "before fine-tuning"), ("_ablation", "MoCo without clustering"),
                  ("_report", "report encoder")):  # fmt: skip
    glue(f"dv_eval_steps{key}", chosen[name][0], display=False)
    glue(f"dv_eval_eta{key}", chosen[name][1], display=False)
fig, axes = plt.subplots(1, len(sweeps), figsize=(3.3 * len(sweeps), 3), sharey=False)
for ax, (name, table) in zip(np.atleast_1d(axes), sweeps.items()):
    for eta in etas:
        line = table.xs(eta, level="eta")["FID"]
        ax.plot(line.index, line.values, marker="o", label=f"η = {eta:g}")
    ax.axhline(float(table["FID"].min()) * (1 + sweep_tolerance), color="k", ls=":", lw=1, label="tolerance")
    ax.scatter([chosen[name][0]], [table.loc[chosen[name], "FID"]], s=120, facecolors="none", edgecolors="r",
               label="chosen")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="DDIM steps", title=name)
axes[0].set_ylabel("validation FID")
axes[0].legend(fontsize=7)
fig.tight_layout()
plt.show()
display(Markdown("Chosen on validation: " + "; ".join(f"{name}: **{s} DDIM steps, η = {e:g}**"
                                                      for name, (s, e) in chosen.items()) + "."))  # fmt: skip
pd.concat(sweeps, names=["model"]).round(3)

# %% [markdown]
# ## VAE draws and their DDPM refinements
#
# The same VAE draws (top row of each pair), each refined by the DDPM (below it): DDIM with the
# steps and η chosen on validation, from the moving average of the fine-tuned UNet. The VAE gives
# the layout of the chest; the DDPM adds what a blurry decoder cannot.

# %% tags=["hide-input"]
examples = {name: kinds for name, kinds in WHITEPAPER_CONDITIONS.items()}
examples["pleural effusion; cardiomegaly"] = ("cardiomegaly", "pleural_effusion")
columns = 6
fig, axes = plt.subplots(2 * len(examples), columns, figsize=(1.6 * columns, 3.3 * len(examples)))
for row, (name, kinds) in enumerate(examples.items()):
    batch = condition_batch(model, [kinds] * columns)
    vae_draws = generate(model, batch, columns, steps=eval_steps, seed=seed + row, part="vae")
    refined = generate(model, batch, columns, steps=eval_steps, guidance=guidance, eta=eval_eta, seed=seed + row,
                       x_vae=vae_draws * 2 - 1)  # fmt: skip
    for col in range(columns):
        for offset, images in ((0, vae_draws), (1, refined)):
            ax = axes[2 * row + offset, col]
            ax.imshow(images[col, 0], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[2 * row, 0].set_ylabel(f"{name}\nVAE", fontsize=8)
        axes[2 * row + 1, 0].set_ylabel("refined", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The MoCo embedding space, with and without the clustering loss
#
# The test images' MoCo embeddings, projected onto their first two principal components and
# coloured by finding category (§3.3's K categories: normal, pleural effusion, pneumonia-like opacity,
# cardiomegaly, other). Beside the pictures, two numbers say how well each embedding groups the
# categories: the cosine silhouette, and the leave-one-out 5-nearest-neighbour accuracy of the
# category beside its chance (the largest category's share).

# %% tags=["hide-input"]
categories = finding_category(test.labels)
separation = {}
fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
for ax, (name, network) in zip(axes, {"with clustering loss": moco, "without (plain MoCo)": moco_plain}.items()):
    embedded = embeddings(network, test.images)
    separation[name] = category_separation(embedded, categories, seed=seed)
    centred = embedded - embedded.mean(dim=0)
    _, _, basis = torch.linalg.svd(centred, full_matrices=False)
    points = (centred @ basis[:2].T).numpy()
    for index, category in enumerate(CLUSTER_CATEGORIES):
        in_category = (categories == index).numpy()
        ax.scatter(
            points[in_category, 0], points[in_category, 1], s=6, alpha=0.6, label=f"{category} ({in_category.sum()})"
        )
    found = separation[name]
    ax.set(title=f"{name}\nsilhouette {found['silhouette']:.3f}, 5-NN accuracy {found['knn_accuracy']['value']:.2f}",
           xlabel="PC 1", ylabel="PC 2")  # fmt: skip
axes[0].legend(fontsize=7, markerscale=2)
fig.tight_layout()
plt.show()
for key, name in (("clustered", "with clustering loss"), ("plain", "without (plain MoCo)")):
    glue(f"dv_knn_{key}", separation[name]["knn_accuracy"]["value"], display=False)
    glue(f"dv_knn_{key}_ci", format_interval(separation[name]["knn_accuracy"]), display=False)
    glue(f"dv_silhouette_{key}", separation[name]["silhouette"] or 0.0, display=False)
glue("dv_knn_chance", separation["with clustering loss"]["chance"], display=False)
pd.DataFrame({name: {"silhouette": v["silhouette"], "5-NN accuracy": format_interval(v["knn_accuracy"]),
                     "chance": v["chance"], "test images": v["n"]} for name, v in separation.items()}).T  # fmt: skip

# %% [markdown]
# ## Conditional samples: single findings, several at once, and a typed report
#
# Rows of samples of the finding-set model for single findings and for two at once, and of the
# report-prompted model for the report in `prompt_report` (read by its hierarchical encoder; the
# finding-set model reads the same report through the findings labeller).

# %% tags=["hide-input"]
pipe, report_pipe = DiffuseVAEPipeline(model, model.checkpoint_info.vocabulary), DiffuseVAEPipeline(
    report_model, report_model.checkpoint_info.vocabulary)  # fmt: skip
prompts = [("finding set", p, pipe, False) for p in ("cardiomegaly", "pleural effusion", "pneumonia",
                                                     "pleural effusion; cardiomegaly", "normal")]  # fmt: skip
prompts += [("report (labeller)", prompt_report, pipe, True), ("report (encoder)", prompt_report, report_pipe, True)]
fig, axes = plt.subplots(len(prompts), columns, figsize=(1.6 * columns, 1.75 * len(prompts)))
for row, (how, text, which, is_report) in enumerate(prompts):
    outputs = which(text, columns, report=is_report, steps=eval_steps, guidance=guidance, eta=eval_eta,
                    generator=torch.Generator().manual_seed(seed + 100 + row))  # fmt: skip
    for col, output in enumerate(outputs):
        axes[row, col].imshow(output.image[0], cmap="gray", vmin=0, vmax=1)
        axes[row, col].set_xticks([])
        axes[row, col].set_yticks([])
    label = text if not is_report else "typed report"
    axes[row, 0].set_ylabel(f"{how}\n{label}", fontsize=7)
fig.tight_layout()
plt.show()
display(Markdown(f"Typed report: *{prompt_report}* — the labeller reads "
                 f"{', '.join(prompt_findings(prompt_report, report=True)[0]) or 'no findings'}."))  # fmt: skip

# %% [markdown]
# ## The condition table
#
# The whitepaper's table (§6: FID per condition, and the reconstructed representation score), for
# its three conditions and every other finding the evaluator can judge (cohort AUROC at least
# `min_evaluator_auroc`, at least `min_test_positives` test cases), each against the controls.
# Per condition and method: the FID of the samples against the real test images of the condition
# (evaluator features; the `real` row is those images themselves, 0 by construction), the
# **fidelity** (the share of images the evaluator calls positive for every finding asked for; for
# healthy lungs, for none of the judgeable findings) with its 95% interval — next to `chance`, the
# same share among the real test images *without* the condition — the **diversity** (mean MS-SSIM
# between samples, 1 = identical) and **memorisation** (the median distance of each image to its nearest
# training image over that of real test images; about 1: no copying). A method is evidence only
# where it beats the mean image and approaches retrieval.

# %% tags=["hide-input"]
whitepaper, _ = scorable_conditions(list(WHITEPAPER_CONDITIONS.values()), test.labels)
others = [(k,) for k in judgeable if (k,) not in WHITEPAPER_CONDITIONS.values()]
wanted = list(WHITEPAPER_CONDITIONS.values()) + others
conditions, skipped = scorable_conditions(wanted, test.labels)
if skipped:
    display(Markdown("Left out (too few test images): " + "; ".join(f"{k} ({v})" for k, v in skipped.items())))


def vae_only(kinds, count, sample_seed):
    return generate(model, condition_batch(model, [kinds] * count), count, steps=None, seed=sample_seed, part="vae")


main_generators = {"DiffuseVAE + MoCo (fine-tuned)": ddim_sampler(model, eval_steps, eval_eta),
                   "VAE alone": vae_only}  # fmt: skip
# The whitepaper's three conditions carry its comparisons (before fine-tuning, and fine-tuned with a
# MoCo trained without the clustering loss); every other condition the fine-tuned model and its VAE.
rows = condition_table({**main_generators, "DiffuseVAE (before fine-tuning)": ddim_sampler(before, *chosen["before fine-tuning"]),
                        "fine-tuned, MoCo without clustering": ddim_sampler(ablation, *chosen["MoCo without clustering"])},
                       [c for c in conditions if c in whitepaper], judge, test, train, n=samples_per_condition,
                       seed=seed)  # fmt: skip
rows += condition_table(main_generators, [c for c in conditions if c not in whitepaper], judge, test, train,
                        n=samples_per_condition, seed=seed + 100)  # fmt: skip
table = pd.DataFrame([{
    "condition": r["condition"], "method": r["method"], "FID": r["fid"]["value"] if r["fid"] else None,
    "fidelity": format_interval(r["fidelity"]), "chance": r["chance"]["value"] if r["chance"] else None,
    "diversity (MS-SSIM)": r["diversity"]["value"], "memorisation": r["memorisation"]["ratio"]["value"],
    "test images": r["test_images"],
} for r in rows])  # fmt: skip
by_key = {(r["condition"], r["method"]): r for r in rows}
for key, method in (("finetuned", "DiffuseVAE + MoCo (fine-tuned)"), ("before", "DiffuseVAE (before fine-tuning)"),
                    ("mean", "mean image"), ("retrieval", "retrieval"), ("real", "real")):  # fmt: skip
    for name, slug in (
        ("pneumonia-like opacity", "opacity"),
        ("pleural effusion", "effusion"),
        ("healthy lungs", "healthy"),
    ):
        row = by_key.get((name, method))  # None where the test split had too few images of the condition
        glue(f"dv_fid_{slug}_{key}", row["fid"]["value"] if row and row["fid"] else float("nan"), display=False)
        glue(f"dv_fidelity_{slug}_{key}", row["fidelity"]["value"] if row else float("nan"), display=False)
glue("dv_num_conditions", len(conditions), display=False)
glue("dv_judgeable", ", ".join(k.replace("_", " ") for k in judgeable) or "none", display=False)
table.set_index(["condition", "method"]).round(3)

# %% [markdown]
# The reconstructed representation score (§4): a test image is reconstructed (the VAE's
# reconstruction under its own findings, refined by the DDPM from noise) and the distance
# $1-\cos$ between the embeddings of the image and of its reconstruction is averaged; lower is
# better. The whitepaper measured it with the same MoCo the fine-tuning had optimised — a model
# trained on its own yardstick — so it is given twice: in the clustered MoCo's space (the
# whitepaper's) and in the evaluator's feature space, which no model here was trained against.
# Two controls say what the numbers are worth: the population-mean image as every image's
# "reconstruction", and a training image with the nearest finding set (retrieval). A model that
# does not beat the mean image has not reconstructed anything its own embedding can see.

# %% tags=["hide-input"]
score_cases = min(len(test.images), samples_per_condition * 2)
real_images = test.images[:score_cases]
score_kinds = case_kinds(test.labels[:score_cases])
representation = {}
for name, network, sampler_of in (("before fine-tuning", before, "before fine-tuning"),
                                  ("fine-tuned (clustered MoCo)", model, "fine-tuned"),
                                  ("fine-tuned (MoCo without clustering)", ablation, "MoCo without clustering")):  # fmt: skip
    steps, eta = chosen[sampler_of]
    reconstructed = reconstruct(network, real_images, condition_batch(network, score_kinds), steps=steps, eta=eta,
                                seed=seed)  # fmt: skip
    representation[name] = {
        "MoCo score (clustered MoCo)": representation_scores(moco, real_images, reconstructed, seed=seed),
        "evaluator-feature distance": feature_distance(
            judge.features(real_images), judge.features(reconstructed), seed=seed
        ),  # fmt: skip
    }
controls = {
    "mean image (control)": train.images.mean(dim=0, keepdim=True).expand(score_cases, -1, -1, -1),
    "retrieval (control)": retrieve_by_labels(test.labels[:score_cases], train, seed=seed),
}
for name, images in controls.items():
    representation[name] = {
        "MoCo score (clustered MoCo)": representation_scores(moco, real_images, images, seed=seed),
        "evaluator-feature distance": feature_distance(judge.features(real_images), judge.features(images), seed=seed),
    }
for key, name in (("before", "before fine-tuning"), ("after", "fine-tuned (clustered MoCo)"),
                  ("mean", "mean image (control)"), ("retrieval", "retrieval (control)")):  # fmt: skip
    glue(f"dv_rep_{key}", representation[name]["MoCo score (clustered MoCo)"]["value"], display=False)
    glue(f"dv_feat_{key}", representation[name]["evaluator-feature distance"]["value"], display=False)
pd.DataFrame({name: {column: format_interval(value, 4) for column, value in scores.items()}
              for name, scores in representation.items()}).T  # fmt: skip

# %% [markdown]
# ## DiffuseVAE beside XRayGAN on the same test reports
#
# The report-level measure of XRayGAN's tables (chapter 5): detection rate minus false-alarm rate
# of the evaluator at its thresholds, macro over the judgeable findings, for images made from each
# of `report_cases` test reports — here of the frontal view, the one DiffuseVAE draws. XRayGAN reads
# the report with its encoder; the report-prompted DiffuseVAE with its own hierarchical encoder; the
# finding-set DiffuseVAE through the labeller. An image that ignores the report scores 0 (the
# mean image); retrieval returns a training image with the nearest finding set.

# %% tags=["hide-input"]
count = min(report_cases, len(test.texts))
texts, labels = test.texts[:count], test.labels[:count]
xraygan = XRayGANPipeline.from_checkpoint(run_dir)
xraygan_frontal = torch.stack([out.frontal for out in xraygan(texts)])
if xraygan_frontal.shape[-1] != size:
    xraygan_frontal = torch.nn.functional.interpolate(xraygan_frontal, size=(size, size), mode="area")
labelled = [prompt_findings(text, report=True)[0] for text in texts]
report_batch = report_pipe.condition_batch([()] * count, texts)
candidates = {
    "XRayGAN": xraygan_frontal,
    "DiffuseVAE, report encoder": generate(report_model, report_batch, count, steps=chosen["report encoder"][0],
                                           guidance=guidance, eta=chosen["report encoder"][1], seed=seed),
    "DiffuseVAE, labelled findings": generate(model, condition_batch(model, labelled), count, steps=eval_steps,
                                              guidance=guidance, eta=eval_eta, seed=seed),
    "mean image (control)": train.images.mean(dim=0, keepdim=True).expand(count, -1, -1, -1),
    "retrieval (control)": retrieve_by_labels(labels, train, seed=seed),
    "real (ceiling)": test.images[:count],
}  # fmt: skip
detection = {name: report_detection(images, labels, judge, seed=seed) for name, images in candidates.items()}
comparison = pd.DataFrame({name: {"detection − false alarm": format_interval(result),
                                  "findings judged": result["findings"]} for name, result in detection.items()}).T  # fmt: skip
for name, slug in (("XRayGAN", "xraygan"), ("DiffuseVAE, report encoder", "report"),
                   ("DiffuseVAE, labelled findings", "labelled"), ("retrieval (control)", "retrieval"),
                   ("real (ceiling)", "real")):  # fmt: skip
    glue(
        f"dv_detection_{slug}", detection[name]["value"] if detection[name]["value"] is not None else 0.0, display=False
    )
glue("dv_report_cases", count, display=False)
comparison

# %% [markdown]
# ## Sampling speed against quality
#
# Images per second on this machine for ancestral sampling over every timestep (a batch of
# `ancestral_images`: it is slow) and for DDIM at each step count (a batch of `speed_images`),
# beside the fine-tuned model's validation quality in the sampler sweep above at each step count and η
# (`xrg bench diffusion` prints the same speeds on any machine).

# %% tags=["hide-input"]
speed = pd.DataFrame(
    sampling_speed(
        model, sorted({int(v) for v in speed_steps if int(v) <= model.schedule.timesteps}), count=speed_images
    )
    + sampling_speed(model, [None], count=ancestral_images)
)
quality = sweeps["fine-tuned"].reset_index()
quality["eta"] = quality["eta"].map(lambda e: f"{e:g}")
quality = quality.pivot_table(index="steps", columns="eta", values=["FID", "detection − false alarm"])
quality.columns = [f"{what} (η {eta}, val)" for what, eta in quality.columns]
speed_table = speed.merge(quality.reset_index(), on="steps", how="left")
fig, ax = plt.subplots(figsize=(5, 3.2))
ddim = speed_table[speed_table["sampler"] == "ddim"]
ax.plot(ddim["steps"], ddim["images_per_s"], marker="o", label="DDIM")
ancestral = speed_table[speed_table["sampler"] == "ancestral"]
ax.scatter(ancestral["steps"], ancestral["images_per_s"], color="k", label="ancestral")
ax.axvline(eval_steps, color="r", ls=":", lw=1, label="chosen on validation")
ax.set(xscale="log", yscale="log", xlabel="denoising steps", ylabel="images / s", title="sampling speed")
ax.legend(fontsize=8)
plt.show()
glue("dv_speed_ddim_fast", float(ddim["images_per_s"].iloc[0]), display=False)
glue("dv_speed_ancestral", float(ancestral["images_per_s"].iloc[0]), display=False)
speed_table.round(3)

# %% tags=["remove-input"]
# Provenance: wall time of this notebook, recorded for the book's run table.
run.finish()
