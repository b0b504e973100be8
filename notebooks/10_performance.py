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
# # Performance
#
# How fast the profile's XRayGAN trains on the machine that executed this book, and how close
# that is to what the hardware can do. Every figure comes from the benchmark functions behind
# `xrg bench train` (`xrg.train.benchmarks`), run here after every other chapter, alone:
#
# * **throughput per phase** — images/s (both views counted) of each training phase on
#   synthetic batches of its size and batch, with the step's floating-point operations counted
#   by torch's formulas (matrix products and convolutions, forward and backward; the BiLSTM
#   cells of the report encoder are not counted, so the fraction of peak is a lower bound) and
#   the achieved FLOP/s against the device's peak;
# * **scaling with the batch size** of the last GAN phase;
# * **scaling with processes**: real short trainings under `torchrun` with 1 and 2 processes
#   on the same global batch (the cores shared out between them);
# * **where the time goes**: `torch.profiler`'s operators of one GAN step by self time.
#
# On a 2-core CPU all of this is small: the point is the method, and the same page executed on
# a GPU box (`--device cuda`) shows that machine's figures.

# %% tags=["parameters"]
# Run
profile: str = "tiny"  # profile whose training is measured
data_dir: str = "../data/tiny"  # data directory for the process-scaling runs
seed: int = 0  # global seed
# Benchmarks
steps: int = 3  # timed steps per phase (after one untimed)
batch_sizes: list = [4, 8, 16]  # batch sizes of the last GAN phase's scaling curve
processes: list = [1, 2]  # process counts of the torchrun scaling runs
scaling_cases: int = 0  # train cases of each scaling run (0: the whole train split)
profiler_steps: int = 2  # GAN steps under torch.profiler

# %% tags=["hide-input"]
import os
import tempfile

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from xrg import perf
from xrg.notebook import check_params, setup
from xrg.train.benchmarks import bench_batch_sizes, bench_processes, bench_speedup, bench_train, profile_gan_step

run = setup(seed=seed, profile=profile, params=dict(data_dir=data_dir))
check_params(
    data_dir=(data_dir, "existing_dir"),
    steps=(steps, range(1, 1001)),
    scaling_cases=(scaling_cases, range(0, 10_000_001)),
    profiler_steps=(profiler_steps, range(1, 101)),
)
if not batch_sizes or not all(isinstance(b, int) and b >= 2 for b in batch_sizes):
    raise ValueError(f"notebook parameter batch_sizes={batch_sizes!r} must list batch sizes of at least 2")
if not processes or not all(isinstance(n, int) and n >= 1 for n in processes):
    raise ValueError(f"notebook parameter processes={processes!r} must list process counts of at least 1")
device = "cpu"
peak = perf.device_peak(device)
display(Markdown(f"**Device:** {peak.device}; peak {perf.flops_line(peak.flops_per_s)}FLOP/s = {peak.basis}."))
glue("perf_device", peak.device, display=False)
glue("perf_peak_gflops", (peak.flops_per_s or 0) / 1e9, display=False)

# %% [markdown]
# ## Throughput per phase

# %% tags=["hide-input"]
phases = pd.DataFrame(bench_train(profile, steps=steps, device=device, print_fn=lambda line: None))
phases["label"] = [
    f"{p} {s}px" if p == "vcn" else f"{p} stage {int(st)} ({s}px)"
    for p, st, s in zip(phases["phase"], phases["stage"].fillna(-1), phases["image_size"])
]
shown = phases[
    ["label", "batch_size", "seconds_per_step", "images_per_s", "flops_per_image", "fraction_of_peak"]
].copy()
shown["GFLOP/image"] = shown.pop("flops_per_image") / 1e9
shown["% of peak"] = 100 * shown.pop("fraction_of_peak")
display(shown.rename(columns={"label": "phase", "batch_size": "batch", "seconds_per_step": "s/step",
                              "images_per_s": "images/s"}).round(4))  # fmt: skip
gan = phases[phases["phase"] == "gan"].iloc[-1]
glue("perf_gan_images_per_s", float(gan["images_per_s"]), display=False)
glue("perf_gan_image_size", int(gan["image_size"]), display=False)
glue("perf_gan_gflop_per_image", float(gan["flops_per_image"]) / 1e9, display=False)
glue("perf_gan_percent_of_peak", 100 * float(gan["fraction_of_peak"] or 0), display=False)
glue("perf_best_percent_of_peak", 100 * float(phases["fraction_of_peak"].fillna(0).max()), display=False)

fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
axes[0].barh(phases["label"], phases["images_per_s"], color="tab:blue")
axes[0].set(xlabel="images/s (both views)", title="training throughput")
axes[0].invert_yaxis()
axes[1].barh(phases["label"], 100 * phases["fraction_of_peak"].fillna(0), color="tab:orange")
axes[1].set(xlabel="% of peak FLOP/s", title="achieved fraction of peak")
axes[1].invert_yaxis()
fig.tight_layout()
plt.show()

# %% [markdown]
# The last GAN stage trains at {glue:text}`perf_gan_images_per_s:.1f` images/s at
# {glue:text}`perf_gan_image_size`px, {glue:text}`perf_gan_gflop_per_image:.3f` GFLOP per image,
# {glue:text}`perf_gan_percent_of_peak:.1f` % of the device's peak; the best phase reaches
# {glue:text}`perf_best_percent_of_peak:.1f` %. Small convolutions on few channels keep the
# vector units mostly idle: the arithmetic per step is too small to amortise the framework's
# per-operator cost.

# %% [markdown]
# ## Against a plain float32 step
#
# The yardstick of the speed work: the library's GAN step against `reference_gan_step`, the
# same modules written the straightforward way in eager float32 (each critic called three
# times per view, the report re-encoded for each critic, every loss read back at once),
# alternating over the same batches. The library's step is timed twice: in float32, as the
# profile trains, and with bfloat16 autocast and channels_last weights (the run settings
# `precision: bfloat16` and `channels_last: true`), which change the arithmetic and so are
# opt-in.

# %% tags=["hide-input"]
variants = {"float32": ("float32", False), "bfloat16 + channels_last": ("bfloat16", True)}
speedups = pd.concat(
    [
        pd.DataFrame(bench_speedup(profile, steps=steps, device=device, print_fn=lambda line: None, precision=p,
                                   channels_last=cl)).assign(variant=name)
        for name, (p, cl) in variants.items()
    ]
)  # fmt: skip
display(
    speedups.pivot_table(index=["stage", "image_size", "batch_size"], columns="variant", values="speedup")
    .rename_axis(columns="library step, × the reference")
    .round(2)
)
largest = speedups[speedups["image_size"] == speedups["image_size"].max()].set_index("variant")["speedup"]
glue("perf_speedup_size", int(speedups["image_size"].max()), display=False)
glue("perf_speedup_float32", float(largest["float32"]), display=False)
glue("perf_speedup_fast", float(largest["bfloat16 + channels_last"]), display=False)

# %% [markdown]
# At {glue:text}`perf_speedup_size`px the library's float32 step runs
# {glue:text}`perf_speedup_float32:.2f`× as fast as the plain reference, and
# {glue:text}`perf_speedup_fast:.2f`× with bfloat16 and channels_last.
#
# ## Scaling with the batch size

# %% tags=["hide-input"]
batches = pd.DataFrame(
    bench_batch_sizes(profile, tuple(batch_sizes), steps=steps, device=device, print_fn=lambda line: None)
)
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(batches["batch_size"], batches["images_per_s"], marker="o")
ax.set(
    xlabel="batch size", ylabel="images/s", xscale="log", title=f"last GAN phase ({int(batches['image_size'][0])}px)"
)
ax.set_xticks(batches["batch_size"], [str(b) for b in batches["batch_size"]])
fig.tight_layout()
plt.show()
glue("perf_batch_gain", float(batches["images_per_s"].iloc[-1] / batches["images_per_s"].iloc[0]), display=False)
glue("perf_batch_small", int(batches["batch_size"].iloc[0]), display=False)
glue("perf_batch_large", int(batches["batch_size"].iloc[-1]), display=False)

# %% [markdown]
# From batch {glue:text}`perf_batch_small` to {glue:text}`perf_batch_large` the throughput
# changes {glue:text}`perf_batch_gain:.2f`×.
#
# ## Scaling with processes (torchrun, gloo)
#
# The same short XRayGAN training (no L2 pre-training, no VCN reward, no sample grids) on
# 1 and on 2 processes with the profile's global batch: each process trains its share of every
# batch and the gradients are all-reduced once per optimizer step (`xrg.train.distributed`).

# %% tags=["hide-input"]
with tempfile.TemporaryDirectory() as scratch:
    cases = scaling_cases or 10**9
    scaling = pd.DataFrame(bench_processes(profile, data_dir, scratch, tuple(processes), train_cases=cases,
                                           print_fn=lambda line: None))  # fmt: skip
table = scaling.pivot_table(index=["stage", "image_size"], columns="processes", values="images_per_s")
table.columns = [f"{n} process(es), images/s" for n in table.columns]
display(table.round(1))
last = scaling[scaling["stage"] == scaling["stage"].max()].set_index("processes")["images_per_s"]
speedup = float(last.iloc[-1] / last.iloc[0])
glue("perf_process_speedup", speedup, display=False)
glue("perf_processes_max", int(last.index[-1]), display=False)
glue("perf_cores", os.cpu_count() or 1, display=False)

# %% [markdown]
# At the last stage {glue:text}`perf_processes_max` processes train
# {glue:text}`perf_process_speedup:.2f`× as many images per second as one process using all
# {glue:text}`perf_cores` cores. On one small machine this measures the cost of the collectives
# against intra-op threading; across GPUs or nodes it is how the paper profile scales out.
#
# ## Where the time goes

# %% tags=["hide-input"]
ops, summary = profile_gan_step(profile, steps=profiler_steps, device=device)
frame = pd.DataFrame(ops)
frame["share"] = 100 * frame["share"]
display(frame.rename(columns={"self_ms": "self ms/step", "share": "% of self time", "calls": "calls/step"}).round(2))
glue("perf_conv_percent", 100 * summary["convolution_share"], display=False)
glue("perf_profiled_step_ms", summary["step_ms"], display=False)

# %% [markdown]
# In one GAN step at {glue:text}`perf_gan_image_size`px
# ({glue:text}`perf_profiled_step_ms:.0f` ms of operator time), convolutions forward and backward
# take {glue:text}`perf_conv_percent:.0f` % of the self time; the rest is the recurrent report
# encoder, element-wise work, the optimizers and the framework's overhead.

# %% tags=["remove-input"]
# Provenance: wall time of this notebook, recorded for the book's run table.
run.finish()
