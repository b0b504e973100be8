"""Benchmarks of XRayGAN: training throughput per stage and report → pair generation latency.

Both print a small table and return its rows as plain dicts (for notebooks).
:func:`bench_train` times a few optimizer steps of every phase of a profile's run on
synthetic batches of that phase's size and batch size (random word ids and images, a
randomly initialised frozen VCN), so it needs no dataset; with the size of a train split it
also estimates the seconds per epoch and per phase. :func:`bench_generate` times the
pipeline from report text to a frontal/lateral pair, for a trained checkpoint or a randomly
initialised model of a profile, on CPU and, when there is one, on CUDA.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xrg import perf
from xrg.data.findings import FINDING_KINDS
from xrg.data.reports import Vocabulary
from xrg.models.vcn import VCNConfig, ViewConsistencyNet, freeze
from xrg.models.xraygan import XRayGAN, XRayGANModelConfig, gradient_penalty
from xrg.profiles import Profile, load_profile
from xrg.train.loop import frozen, real_images
from xrg.train.vcn import VCNTrainConfig, make_vcn_optimizer, vcn_step
from xrg.train.xraygan import (
    XRayGANTrainConfig,
    gan_step,
    make_optimizers,
    pretrain_step,
    step_precision,
    training_phases,
    use_channels_last,
)

#: Reports in the style of Open-i, written for the benchmarks (lengths near the Open-i median).
BENCH_REPORTS: tuple[str, ...] = (
    "FINDINGS: The heart is mildly enlarged. There is a small left pleural effusion with adjacent "
    "basilar atelectasis. No pneumothorax. Degenerative changes of the thoracic spine. "
    "IMPRESSION: Mild cardiomegaly and small left effusion.",
    "FINDINGS: Lungs are clear bilaterally. Cardiomediastinal silhouette is within normal limits. "
    "No focal consolidation, effusion or pneumothorax. IMPRESSION: No acute cardiopulmonary process.",
    "FINDINGS: Patchy opacity in the right lower lobe which may represent pneumonia. Calcified granuloma "
    "in the left upper lobe. Median sternotomy wires are intact. IMPRESSION: Right lower lobe pneumonia.",
)


def _profile(profile: str | Profile) -> Profile:
    return profile if isinstance(profile, Profile) else load_profile(profile)


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(batch_size: int, image_size: int, vocab_size: int, generator: torch.Generator) -> dict[str, Any]:
    """A :func:`collate_pairs`-shaped batch: 6 findings and 2 impression sentences of 12 words, random
    images and multi-hot findings labels (each finding present with probability 0.2)."""

    def section(num_sentences: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(2, vocab_size, (batch_size, num_sentences, 12), generator=generator)
        return ids, torch.ones_like(ids, dtype=torch.bool)

    findings_ids, findings_mask = section(6)
    impression_ids, impression_mask = section(2)
    return {
        "findings_ids": findings_ids,
        "findings_mask": findings_mask,
        "impression_ids": impression_ids,
        "impression_mask": impression_mask,
        "frontal": torch.rand(batch_size, 1, image_size, image_size, generator=generator),
        "lateral": torch.rand(batch_size, 1, image_size, image_size, generator=generator),
        "patient_id": [f"synthetic{i}" for i in range(batch_size)],
        "labels": (torch.rand(batch_size, len(FINDING_KINDS), generator=generator) < 0.2).float(),  # multi-hot
    }


def _on(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}


def _timed_steps(
    step: Callable[[dict[str, Any]], Any], batches: list[dict[str, Any]], warmup: int, device: torch.device
) -> float:
    """Median seconds of ``step`` over ``batches`` after the first ``warmup``."""
    durations = []
    for number, batch in enumerate(batches):
        batch = _on(batch, device)
        _synchronize(device)
        start = time.perf_counter()
        step(batch)
        _synchronize(device)
        if number >= warmup:
            durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def measure_steps(
    step: Callable[[dict[str, Any]], Any],
    batches: list[dict[str, Any]],
    warmup: int,
    device: torch.device,
    images_per_step: int,
    peak: perf.Peak,
) -> dict[str, Any]:
    """Seconds per step (:func:`_timed_steps`), then one more step counted by :func:`xrg.perf.count_flops`:
    FLOPs per step and per image, the achieved FLOP/s, its fraction of ``peak``, and peak memory."""
    perf.reset_peak_memory(device)
    seconds = _timed_steps(step, batches, warmup, device)
    last = _on(batches[-1], device)
    flops = perf.count_flops(lambda: step(last))
    memory, memory_basis = perf.peak_memory_bytes(device)
    achieved = flops / seconds if seconds > 0 else None
    return {
        "seconds_per_step": seconds,
        "images_per_s": images_per_step / seconds,
        "flops_per_step": flops,
        "flops_per_image": flops / images_per_step,
        "achieved_flops_per_s": achieved,
        "fraction_of_peak": achieved / peak.flops_per_s if achieved and peak.flops_per_s else None,
        "peak_memory_bytes": memory,
        "peak_memory_basis": memory_basis,
    }


def _row_text(row: dict[str, Any]) -> str:
    """The FLOP and memory columns of a printed row."""
    fraction = row.get("fraction_of_peak")
    return (
        f"{perf.flops_line(row['flops_per_image']) + 'FLOP':>12}{perf.flops_line(row['achieved_flops_per_s']) + 'FLOP/s':>14}"
        f"{'-' if fraction is None else f'{100 * fraction:.1f} %':>8}{row['peak_memory_bytes'] / 2**20:>9.0f}"
    )


_FLOP_HEADER = f"{'FLOP/image':>12}{'achieved':>14}{'of peak':>8}{'peak MiB':>9}"


def append_rows(path: str | os.PathLike, rows: list[dict[str, Any]], **common: Any) -> Path:
    """Append ``rows`` (each with ``common`` and where it ran, :func:`xrg.perf.environment`) to the JSON-lines ``path``."""
    from xrg.io import append_jsonl

    path = Path(path)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for row in rows:
        append_jsonl(path, {"time": stamp, **common, **perf.environment(), **row})
    return path


def bench_train(
    profile: str | Profile = "cpu",
    steps: int = 3,
    warmup: int = 1,
    device: str | torch.device | None = None,
    train_cases: int | None = None,
    vocab_size: int = 1500,
    print_fn: Callable[[str], None] = print,
    jsonl: str | os.PathLike | None = None,
    precision: str | None = None,
    channels_last: bool | None = None,
) -> list[dict[str, Any]]:
    """Time ``steps`` training steps (after ``warmup``) of every phase of ``profile``'s run.

    The rows cover the VCN of every stage size (phase ``vcn``) and every XRayGAN phase.
    ``images_per_s`` counts both views. Each row also has the step's FLOPs (per step and per
    image), the achieved FLOP/s and its fraction of the device's peak, and peak memory
    (:func:`measure_steps`). With ``train_cases`` (the train split size; the cpu dataset has
    about 2,700) the rows also estimate seconds per epoch and per phase. With ``jsonl`` the
    rows are appended to that file. ``precision`` and ``channels_last`` replace the profile's
    settings of the XRayGAN steps (``XRayGANTrainConfig``).
    """
    profile = _profile(profile)
    device = _device(device)
    config = _with_arithmetic(XRayGANTrainConfig.from_profile(profile), precision, channels_last)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    peak = perf.device_peak(device)
    print_fn(f"training throughput, profile {profile.name}, device {device}, median of {steps} timed steps per phase; "
             f"XRayGAN steps in {_arithmetic_text(config)}")  # fmt: skip
    print_fn(f"peak: {perf.flops_line(peak.flops_per_s)}FLOP/s ({peak.device}: {peak.basis})")
    print_fn("FLOPs: matrix products and convolutions, forward and backward; the BiLSTM cells are not counted")
    header = f"{'phase':<9}{'stage':>5}{'size':>6}{'batch':>6}{'s/step':>9}{'images/s':>10}" + _FLOP_HEADER
    print_fn(header + (f"{'s/epoch':>9}{'epochs':>7}{'phase s':>9}" if train_cases else ""))
    rows = []

    def report(
        phase: str, stage: int | None, image_size: int, batch_size: int, num_epochs: int, measured: dict[str, Any]
    ) -> None:
        row = {
            "family": "xraygan", "phase": phase, "stage": stage, "image_size": image_size, "batch_size": batch_size,
            **measured, "device": str(device),
        }  # fmt: skip
        stage_text = "-" if stage is None else str(stage)
        seconds = row["seconds_per_step"]
        line = f"{phase:<9}{stage_text:>5}{image_size:>6}{batch_size:>6}{seconds:>9.3f}{row['images_per_s']:>10.1f}"
        line += _row_text(row)
        if train_cases:
            line += _epoch_estimate(row, train_cases, num_epochs)
        rows.append(row)
        print_fn(line)

    def batch_size_of(size: int) -> int:
        return size if train_cases is None else min(size, train_cases)

    for image_size in config.vcn_sizes:
        vcn_config = VCNTrainConfig.from_profile(profile, image_size=image_size)
        vcn = ViewConsistencyNet(VCNConfig.from_run_config(vcn_config)).to(device).train()
        optimizer = make_vcn_optimizer(vcn, vcn_config)
        batch_size = batch_size_of(vcn_config.batch_size)
        batches = [synthetic_batch(batch_size, image_size, vocab_size, generator) for _ in range(warmup + steps)]
        step = functools.partial(vcn_step, vcn, optimizer, generator=generator)
        measured = measure_steps(step, batches, warmup, device, 2 * batch_size, peak)
        report("vcn", None, image_size, batch_size, vcn_config.num_epochs, measured)

    model = XRayGAN(XRayGANModelConfig.from_run_config(config, vocab_size)).to(device)
    frozen_vcn = freeze(ViewConsistencyNet().to(device)) if config.vc_weight > 0 else None
    use_channels_last(config, model, frozen_vcn)

    def in_precision(inner: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def step(batch: Any) -> Any:
            with step_precision(config, device):
                return inner(batch)

        return step

    for index, phase in enumerate(training_phases(config)):
        optimizers = make_optimizers(model, phase, index, config)
        model.train()
        batch_size = batch_size_of(phase.batch_size)
        batches = [synthetic_batch(batch_size, phase.image_size, vocab_size, generator) for _ in range(warmup + steps)]
        settings = dict(phase=phase, optimizers=optimizers, config=config)
        if phase.name == "pretrain":
            step = functools.partial(pretrain_step, model, **settings)
        else:
            step = functools.partial(gan_step, model, frozen_vcn, **settings)
        step = in_precision(step)
        measured = measure_steps(step, batches, warmup, device, 2 * batch_size, peak)
        report(phase.name, phase.stage, phase.image_size, batch_size, phase.num_epochs, measured)
    if train_cases:
        total = sum(row["phase_seconds"] for row in rows)
        print_fn(f"estimated training time for {train_cases} train cases, VCNs included: {total / 60:.1f} min")
    return _train_rows_out(rows, jsonl, print_fn, profile, peak)


def _pggan_bench_step(model: Any, config: Any, phase: Any, optimizers: Any, alpha: float, batch: dict) -> Any:
    from xrg.train.pggan import pggan_step

    return pggan_step(model, config, phase, batch["images"], optimizers, alpha)


def bench_train_pggan(
    profile: str | Profile = "cpu",
    steps: int = 3,
    warmup: int = 1,
    device: str | torch.device | None = None,
    train_cases: int | None = None,
    print_fn: Callable[[str], None] = print,
    jsonl: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Time ``steps`` PGGAN training steps (after ``warmup``) of every stage of ``profile``'s ``pggan:`` run.

    Synthetic real images at the final size (the trainer area-averages them to each stage),
    α = ½ in every stage after the first (the fade-in path, the slower one). ``images_per_s``
    counts real images per second; FLOPs, fraction of peak and memory as in :func:`bench_train`.
    With ``train_cases`` the rows also estimate seconds per epoch (over the stage's
    ``stage_cases`` where the profile caps them) and per stage, and the total; with ``jsonl``
    they are appended to that file.
    """
    from xrg.models.pggan import PGGAN
    from xrg.train.pggan import PGGANTrainConfig, make_pggan_optimizers, training_phases as pggan_phases

    profile = _profile(profile)
    device = _device(device)
    config = PGGANTrainConfig.from_profile(profile)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model = PGGAN(config.model).to(device)
    final = config.model.final_size
    peak = perf.device_peak(device)
    print_fn(
        f"PGGAN training throughput, profile {profile.name}, device {device}, median of {steps} timed steps per stage"
    )
    print_fn(f"peak: {perf.flops_line(peak.flops_per_s)}FLOP/s ({peak.device}: {peak.basis})")
    header = f"{'stage':>5}{'size':>6}{'batch':>6}{'s/step':>9}{'images/s':>10}" + _FLOP_HEADER
    print_fn(header + (f"{'s/epoch':>9}{'epochs':>7}{'stage s':>9}" if train_cases else ""))
    rows = []
    for index, phase in enumerate(pggan_phases(config)):
        optimizers = make_pggan_optimizers(model, phase, index, config)
        model.train()
        model.generator_ema.eval()
        batch_size = phase.batch_size if train_cases is None else min(phase.batch_size, train_cases)
        alpha = 0.5 if phase.stage else 1.0
        batches = [
            {"images": torch.rand(batch_size, 1, final, final, generator=generator)} for _ in range(warmup + steps)
        ]
        step = functools.partial(_pggan_bench_step, model, config, phase, optimizers, alpha)
        measured = measure_steps(step, batches, warmup, device, batch_size, peak)
        row = {
            "family": "pggan", "stage": phase.stage, "image_size": phase.image_size, "batch_size": batch_size,
            **measured, "device": str(device),
        }  # fmt: skip
        seconds = row["seconds_per_step"]
        line = f"{phase.stage:>5}{phase.image_size:>6}{batch_size:>6}{seconds:>9.3f}{row['images_per_s']:>10.1f}"
        line += _row_text(row)
        if train_cases:
            cap = config.stage_cases[phase.stage] if config.stage_cases else 0
            cases = min(train_cases, cap) if cap else train_cases
            line += _epoch_estimate(row, cases, phase.num_epochs)
        rows.append(row)
        print_fn(line)
    if train_cases:
        total = sum(row["phase_seconds"] for row in rows)
        print_fn(f"estimated PGGAN training time for {train_cases} train cases: {total / 60:.1f} min")
    return _train_rows_out(rows, jsonl, print_fn, profile, peak)


def _latencies(pipe: Any, n: int, warmup: int) -> list[float]:
    device = pipe.device
    for number in range(warmup):
        pipe(BENCH_REPORTS[number % len(BENCH_REPORTS)])
    latencies = []
    for number in range(n):
        _synchronize(device)
        start = time.perf_counter()
        output = pipe(BENCH_REPORTS[number % len(BENCH_REPORTS)])
        output.frontal.sum().item()  # results are on the CPU: the pair is complete
        latencies.append(time.perf_counter() - start)
    return latencies


def bench_generate(
    profile: str | Profile = "cpu",
    checkpoint: str | os.PathLike | None = None,
    n: int = 20,
    warmup: int = 2,
    devices: tuple[str, ...] | None = None,
    print_fn: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Report → pair latency (median and p90, milliseconds) of a checkpoint or of ``profile``'s untrained model."""
    from xrg.pipelines import XRayGANPipeline

    if devices is None:
        devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    rows = []
    for device in devices:
        if checkpoint is not None:
            pipe = XRayGANPipeline.from_checkpoint(checkpoint, device=device)
            source = str(checkpoint)
        else:
            config = XRayGANTrainConfig.from_profile(_profile(profile))
            pipe = XRayGANPipeline.from_config(config, Vocabulary.build(BENCH_REPORTS), seed=config.seed, device=device)
            source = f"untrained {_profile(profile).name} profile model"
        latencies = np.array(_latencies(pipe, n, warmup)) * 1000.0
        row = {
            "device": device,
            "image_size": pipe.image_size,
            "n": n,
            "median_ms": float(np.median(latencies)),
            "p90_ms": float(np.percentile(latencies, 90)),
        }
        rows.append(row)
        print_fn(
            f"report → {pipe.image_size}px pair on {device} ({source}): median {row['median_ms']:.1f} ms, "
            f"p90 {row['p90_ms']:.1f} ms over {n} reports"
        )
    return rows


def _final_gan_phase(profile: Profile, vocab_size: int, device: torch.device) -> tuple[Any, Any, Any, Any]:
    """The profile's XRayGAN config, model, last GAN phase and that phase's optimizers (untrained, seeded)."""
    config = XRayGANTrainConfig.from_profile(profile)
    torch.manual_seed(config.seed)
    model = XRayGAN(XRayGANModelConfig.from_run_config(config, vocab_size)).to(device).train()
    phases = training_phases(config)
    index, phase = next((i, p) for i, p in reversed(list(enumerate(phases))) if p.name == "gan")
    return config, model, phase, make_optimizers(model, phase, index, config)


def bench_batch_sizes(
    profile: str | Profile = "cpu",
    batch_sizes: tuple[int, ...] = (8, 16, 32),
    steps: int = 3,
    warmup: int = 1,
    device: str | torch.device | None = None,
    vocab_size: int = 1500,
    print_fn: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Images/s of the last GAN phase's step of ``profile`` at each of ``batch_sizes`` (synthetic batches, frozen VCN)."""
    profile, device = _profile(profile), _device(device)
    peak = perf.device_peak(device)
    rows = []
    for batch_size in batch_sizes:
        config, model, phase, optimizers = _final_gan_phase(profile, vocab_size, device)
        frozen_vcn = freeze(ViewConsistencyNet().to(device)) if config.vc_weight > 0 else None
        generator = torch.Generator().manual_seed(config.seed)
        batches = [synthetic_batch(batch_size, phase.image_size, vocab_size, generator) for _ in range(warmup + steps)]
        step = functools.partial(gan_step, model, frozen_vcn, phase=phase, optimizers=optimizers, config=config)
        row = {"image_size": phase.image_size, "batch_size": batch_size, "device": str(device)}
        row.update(measure_steps(step, batches, warmup, device, 2 * batch_size, peak))
        rows.append(row)
        print_fn(f"GAN step {phase.image_size}px, batch {batch_size}: {row['images_per_s']:.1f} images/s")
    return rows


def profile_gan_step(
    profile: str | Profile = "cpu",
    steps: int = 2,
    top: int = 12,
    device: str | torch.device | None = None,
    vocab_size: int = 1500,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Where a step of the last GAN phase of ``profile`` spends its time: ``torch.profiler``'s
    operators by self time over ``steps`` steps (after one untimed), the ``top`` ones and the rest.

    Returns the rows (``operator``, ``self_ms`` per step, ``share`` of all operators' self time,
    ``calls`` per step) and a summary: the image size and batch, the operators' self time per
    step and the share of it in convolutions (forward and backward, every operator named ``conv``).
    """
    from torch.profiler import ProfilerActivity, profile as torch_profile

    profile, device = _profile(profile), _device(device)
    config, model, phase, optimizers = _final_gan_phase(profile, vocab_size, device)
    frozen_vcn = freeze(ViewConsistencyNet().to(device)) if config.vc_weight > 0 else None
    generator = torch.Generator().manual_seed(config.seed)
    batch_size = phase.batch_size
    batches = [
        _on(synthetic_batch(batch_size, phase.image_size, vocab_size, generator), device) for _ in range(steps + 1)
    ]
    step = functools.partial(gan_step, model, frozen_vcn, phase=phase, optimizers=optimizers, config=config)
    step(batches[0])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for batch in batches[1:]:
            step(batch)
        _synchronize(device)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [
        {"operator": e.key, "self_ms": e.self_cpu_time_total / 1e3 / steps, "share": e.self_cpu_time_total / total,
         "calls": e.count / steps}
        for e in events[:top]
    ]  # fmt: skip
    conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key.lower())
    summary = {"image_size": phase.image_size, "batch_size": batch_size, "step_ms": total / 1e3 / steps,
               "convolution_share": conv / total, "device": str(device)}  # fmt: skip
    rest = events[top:]
    if rest:
        rest_time = sum(e.self_cpu_time_total for e in rest)
        rows.append({"operator": f"({len(rest)} other operators)", "self_ms": rest_time / 1e3 / steps,
                     "share": rest_time / total, "calls": sum(e.count for e in rest) / steps})  # fmt: skip
    return rows, summary


def reference_gan_step(
    model: XRayGAN,
    vcn: ViewConsistencyNet | None,
    batch: dict[str, Any],
    phase: Any,
    optimizers: Any,
    config: XRayGANTrainConfig,
) -> dict[str, float]:
    """The speed benchmark's reference: XRayGAN's adversarial step written plainly, in eager float32.

    The same modules, losses and optimizers as :func:`~xrg.train.xraygan.gan_step`, coded the
    straightforward way (and the way the official code does it): every critic is called three
    times per update (the interpolates of the gradient penalty, the real images, the generated
    ones), the report is encoded again for each view's critic, and every loss is read back to
    the host (``.item()``) as it is made, to check it and to log it. :func:`bench_speedup`
    times it against the library's step on the same batches.
    """
    stage = str(phase.stage)
    critics = {view: model.discriminators[view][stage] for view in model.discriminators}
    device = next(model.parameters()).device
    real = real_images(batch, tuple(critics), device)
    fake = model.generate(model.encode(batch).c, phase.stage)
    logged: dict[str, float] = {}
    for _ in range(config.n_critic):
        d_loss = torch.zeros((), device=device)
        for view, critic in critics.items():
            with torch.no_grad():
                condition = model.encode(batch).c
            gp = gradient_penalty(critic, real[view], fake[view], condition)
            real_score = critic(real[view], condition).mean()
            fake_score = critic(fake[view].detach(), condition).mean()
            view_loss = fake_score - real_score + config.gp_weight * gp
            for name, value in (("gp", gp), ("d_real", real_score), ("d_fake", fake_score)):
                logged[f"{name}_{view}"] = value.item()
                if not np.isfinite(logged[f"{name}_{view}"]):
                    raise FloatingPointError(f"non-finite {name} of the {view} critic")
            d_loss = d_loss + view_loss
        optimizers.discriminator.zero_grad(set_to_none=True)
        d_loss.backward()
        optimizers.discriminator.step()
        logged["d_loss"] = d_loss.item()
    c = model.encode(batch).c
    g_loss = torch.zeros((), device=device)
    with frozen(critics.values()):
        for view, critic in critics.items():
            adv = -critic(fake[view], c).mean()
            rec = F.mse_loss(fake[view], real[view])
            logged[f"adv_{view}"], logged[f"rec_{view}"] = adv.item(), rec.item()
            g_loss = g_loss + config.adv_weight * adv + config.rec_weight * rec
        if vcn is not None:
            vc_prob = vcn.prob(fake["frontal"], fake["lateral"]).mean()
            logged["vc_prob"] = vc_prob.item()
            g_loss = g_loss - config.vc_weight * vc_prob
        logged["g_loss"] = g_loss.item()
        if not np.isfinite(logged["g_loss"]):
            raise FloatingPointError("non-finite generator loss")
        optimizers.generator.zero_grad(set_to_none=True)
        g_loss.backward()
        optimizers.generator.step()
    return logged


def bench_train_diffusevae(
    profile: str | Profile = "cpu",
    steps: int = 3,
    warmup: int = 1,
    device: str | torch.device | None = None,
    train_cases: int | None = None,
    vocab_size: int = 1500,
    print_fn: Callable[[str], None] = print,
    jsonl: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Time ``steps`` training steps (after ``warmup``) of each DiffuseVAE stage of ``profile``'s ``diffusevae:`` run.

    The stages' own steps (:mod:`xrg.train.diffusevae`: the VAE, MoCo, the DDPM and the
    representation-guided fine-tuning) on synthetic batches of the stage's batch size, with
    freshly initialised networks (the speed of a step does not depend on what its networks
    learnt). ``images_per_s`` counts images of the run's one view; FLOPs, fraction of peak and
    memory as in :func:`bench_train`; with ``train_cases`` the rows estimate seconds per epoch
    and per stage; with ``jsonl`` they are appended to that file.
    """
    import tempfile

    from xrg.models.moco import MoCo
    from xrg.train.diffusevae import STAGE_STEPS, STAGES, DiffuseVAETrainConfig, stage_network, stage_phase

    profile, device = _profile(profile), _device(device)
    config = DiffuseVAETrainConfig.from_profile(profile)
    generator = torch.Generator().manual_seed(config.seed)
    peak = perf.device_peak(device)
    print_fn(f"DiffuseVAE training throughput, profile {profile.name}, device {device}, view {config.view}, "
             f"median of {steps} timed steps per stage")  # fmt: skip
    print_fn(f"peak: {perf.flops_line(peak.flops_per_s)}FLOP/s ({peak.device}: {peak.basis})")
    header = f"{'stage':<9}{'size':>6}{'batch':>6}{'s/step':>9}{'images/s':>10}" + _FLOP_HEADER
    print_fn(header + (f"{'s/epoch':>9}{'epochs':>7}{'stage s':>9}" if train_cases else ""))
    rows = []
    with tempfile.TemporaryDirectory(prefix="xrg-bench-") as scratch:
        for stage in STAGES:
            phase = stage_phase(config, stage)
            torch.manual_seed(config.seed)
            model = stage_network(config, stage, vocab_size).to(device)
            extra = {"moco": MoCo(config.moco.model)} if stage == "finetune" else {}
            # the steps read only their batches, so no data directory is needed (data=None)
            family = STAGE_STEPS[stage](config, None, model, device=device, run_dir=Path(scratch), **extra)
            optimizers = family.optimizers(phase, 0)
            family.train_mode(phase)
            batch_size = phase.batch_size if train_cases is None else min(phase.batch_size, train_cases)
            batches = [
                synthetic_batch(batch_size, config.image_size, vocab_size, generator) for _ in range(warmup + steps)
            ]
            update = functools.partial(_stage_bench_step, family, phase, optimizers)
            measured = measure_steps(update, batches, warmup, device, batch_size, peak)
            row = {"family": "diffusevae", "stage": stage, "image_size": config.image_size, "batch_size": batch_size,
                   **measured, "device": str(device)}  # fmt: skip
            seconds = row["seconds_per_step"]
            line = f"{stage:<9}{config.image_size:>6}{batch_size:>6}{seconds:>9.3f}{row['images_per_s']:>10.1f}"
            line += _row_text(row)
            if train_cases:
                line += _epoch_estimate(row, train_cases, phase.num_epochs)
            rows.append(row)
            print_fn(line)
    if train_cases:
        total = sum(row["phase_seconds"] for row in rows)
        print_fn(f"estimated training time of the four stages for {train_cases} train cases: {total / 60:.1f} min")
    return _train_rows_out(rows, jsonl, print_fn, profile, peak)


def bench_train_baselines(
    profile: str | Profile = "cpu",
    steps: int = 3,
    warmup: int = 1,
    device: str | torch.device | None = None,
    train_cases: int | None = None,
    vocab_size: int = 1500,
    print_fn: Callable[[str], None] = print,
    jsonl: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Time ``steps`` training steps (after ``warmup``) of every phase of each baseline of ``profile``.

    GAN-INT-CLS, StackGAN and AttnGAN with the profile's ``baselines:`` settings, through their
    own step (:func:`xrg.train.baselines.train_step`, one discriminator then one generator
    update) on synthetic batches; ``images_per_s`` counts both views; FLOPs, fraction of peak and
    memory as in :func:`bench_train`; with ``train_cases`` the rows estimate seconds per epoch
    and per phase; with ``jsonl`` they are appended to that file.
    """
    from xrg.models.baselines import BASELINE_METHODS, BaselineModel, BaselineModelConfig
    from xrg.train.baselines import BaselineStep, BaselineTrainConfig, training_phases as baseline_phases

    profile, device = _profile(profile), _device(device)
    peak = perf.device_peak(device)
    print_fn(f"baseline training throughput, profile {profile.name}, device {device}, median of {steps} timed steps "
             "per phase")  # fmt: skip
    print_fn(f"peak: {perf.flops_line(peak.flops_per_s)}FLOP/s ({peak.device}: {peak.basis})")
    header = f"{'method':<12}{'phase':<8}{'size':>6}{'batch':>6}{'s/step':>9}{'images/s':>10}" + _FLOP_HEADER
    print_fn(header + (f"{'s/epoch':>9}{'epochs':>7}{'phase s':>9}" if train_cases else ""))
    rows = []
    for method in BASELINE_METHODS:
        config = BaselineTrainConfig.from_profile(profile, method)
        generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        model = BaselineModel(BaselineModelConfig.from_run_config(config, vocab_size)).to(device)
        phases = baseline_phases(config)
        # the step reads only its batches, so no data directory is needed (data=None)
        family = BaselineStep(config, phases, None, model, device, Path("."))
        for index, phase in enumerate(phases):
            optimizers = family.optimizers(phase, index)
            family.train_mode(phase)
            batch_size = config.batch_size if train_cases is None else min(config.batch_size, train_cases)
            batches = [
                synthetic_batch(batch_size, phase.image_size, vocab_size, generator) for _ in range(warmup + steps)
            ]
            update = functools.partial(_stage_bench_step, family, phase, optimizers)
            measured = measure_steps(update, batches, warmup, device, 2 * batch_size, peak)
            row = {"family": "baselines", "method": method, "phase": phase.name, "stage": phase.stage,
                   "image_size": phase.image_size, "batch_size": batch_size, **measured, "device": str(device)}  # fmt: skip
            seconds = row["seconds_per_step"]
            line = (f"{method:<12}{phase.name:<8}{phase.image_size:>6}{batch_size:>6}{seconds:>9.3f}"
                    f"{row['images_per_s']:>10.1f}" + _row_text(row))  # fmt: skip
            if train_cases:
                line += _epoch_estimate(row, train_cases, phase.num_epochs)
            rows.append(row)
            print_fn(line)
    if train_cases:
        for method in BASELINE_METHODS:
            total = sum(row["phase_seconds"] for row in rows if row["method"] == method)
            print_fn(f"estimated {method} training time for {train_cases} train cases: {total / 60:.1f} min")
    return _train_rows_out(rows, jsonl, print_fn, profile, peak)


def _train_rows_out(
    rows: list[dict[str, Any]],
    jsonl: str | os.PathLike | None,
    print_fn: Callable[[str], None],
    profile: Profile,
    peak: perf.Peak,
) -> list[dict[str, Any]]:
    """``rows``, appended to ``jsonl`` first (when given) as a training benchmark's, saying so."""
    if jsonl is not None:
        path = append_rows(jsonl, rows, bench="train", profile=profile.name, peak=peak.as_dict())
        print_fn(f"appended {len(rows)} rows to {path}")
    return rows


def _epoch_estimate(row: dict[str, Any], cases: int, num_epochs: int) -> str:
    """Add the seconds per epoch of ``cases`` train cases and per phase of ``num_epochs`` to ``row``; their columns."""
    row.update(epoch_seconds=max(1, cases // row["batch_size"]) * row["seconds_per_step"], num_epochs=num_epochs)
    row["phase_seconds"] = row["epoch_seconds"] * num_epochs
    return f"{row['epoch_seconds']:>9.0f}{num_epochs:>7}{row['phase_seconds']:>9.0f}"


def _stage_bench_step(family: Any, phase: Any, optimizers: Any, batch: dict[str, Any]) -> dict[str, float]:
    return family.update(phase, batch, optimizers)


def _arithmetic_text(config: XRayGANTrainConfig) -> str:
    """``config``'s step arithmetic in words: ``float32``, ``bfloat16, channels_last``, ..."""
    return config.precision + (", channels_last" if config.channels_last else "")


def _with_arithmetic(
    config: XRayGANTrainConfig, precision: str | None, channels_last: bool | None
) -> XRayGANTrainConfig:
    """``config`` with ``precision`` and ``channels_last`` where they are given (checked as a config's)."""
    settings = {k: v for k, v in (("precision", precision), ("channels_last", channels_last)) if v is not None}
    return dataclasses.replace(config, **settings)


def bench_speedup(
    profile: str | Profile = "cpu",
    steps: int = 5,
    warmup: int = 1,
    device: str | torch.device | None = None,
    vocab_size: int = 1500,
    print_fn: Callable[[str], None] = print,
    jsonl: str | os.PathLike | None = None,
    precision: str | None = None,
    channels_last: bool | None = None,
) -> list[dict[str, Any]]:
    """Images/s of the library's GAN step against :func:`reference_gan_step`, every GAN phase of ``profile``.

    The library's step runs with the profile's ``precision`` and ``channels_last`` (or these
    arguments'), the reference always in plain float32 NCHW. One model and its optimizers serve
    both steps, except that with channels_last the library's step trains its own copy (same
    starting weights, its own optimizers); the steps alternate, reference then library, over the same ``warmup + steps`` synthetic
    batches, and each row has both medians and their ratio (> 1: the library's step is faster).
    """
    profile, device = _profile(profile), _device(device)
    config = _with_arithmetic(XRayGANTrainConfig.from_profile(profile), precision, channels_last)
    plain = dataclasses.replace(config, precision="float32", channels_last=False)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    print_fn(f"GAN step against the plain eager float32 reference, profile {profile.name}, device {device}, "
             f"{torch.get_num_threads()} thread(s), median of {steps} alternating steps; library step: "
             f"{_arithmetic_text(config)}")  # fmt: skip
    print_fn(f"{'stage':>5}{'size':>6}{'batch':>6}{'reference s':>13}{'library s':>11}{'speed-up':>10}")
    model = XRayGAN(XRayGANModelConfig.from_run_config(config, vocab_size)).to(device).train()
    frozen_vcn = freeze(ViewConsistencyNet().to(device)) if config.vc_weight > 0 else None
    fast_model, fast_vcn = model, frozen_vcn
    if config.channels_last:
        fast_model, fast_vcn = copy.deepcopy(model), copy.deepcopy(frozen_vcn)
        use_channels_last(config, fast_model, fast_vcn)
    rows = []
    for index, phase in enumerate(training_phases(config)):
        if phase.name != "gan":
            continue
        optimizers = make_optimizers(model, phase, index, config)
        fast_optimizers = optimizers if fast_model is model else make_optimizers(fast_model, phase, index, config)
        batches = [
            _on(synthetic_batch(phase.batch_size, phase.image_size, vocab_size, generator), device)
            for _ in range(warmup + steps)
        ]
        timings: dict[str, list[float]] = {"reference": [], "library": []}

        plain_step = functools.partial(reference_gan_step, model, frozen_vcn, phase=phase, optimizers=optimizers,
                                       config=plain)  # fmt: skip
        library_step = functools.partial(gan_step, fast_model, fast_vcn, phase=phase, optimizers=fast_optimizers,
                                         config=config)  # fmt: skip
        for number, batch in enumerate(batches):
            for name, step in (("reference", plain_step), ("library", library_step)):
                _synchronize(device)
                start = time.perf_counter()
                with step_precision(config if name == "library" else plain, device):
                    step(batch)
                _synchronize(device)
                if number >= warmup:
                    timings[name].append(time.perf_counter() - start)
        reference, library = (statistics.median(timings[k]) for k in ("reference", "library"))
        row = {"family": "xraygan", "stage": phase.stage, "image_size": phase.image_size,
               "batch_size": phase.batch_size, "reference_seconds": reference, "library_seconds": library,
               "reference_images_per_s": 2 * phase.batch_size / reference,
               "library_images_per_s": 2 * phase.batch_size / library, "speedup": reference / library,
               "threads": torch.get_num_threads(), "device": str(device), "precision": config.precision,
               "channels_last": config.channels_last}  # fmt: skip
        rows.append(row)
        print_fn(f"{phase.stage:>5}{phase.image_size:>6}{phase.batch_size:>6}{reference:>13.3f}{library:>11.3f}"
                 f"{row['speedup']:>9.2f}x")  # fmt: skip
    if jsonl is not None:
        print_fn(f"appended {len(rows)} rows to {append_rows(jsonl, rows, bench='speedup', profile=profile.name)}")
    return rows


#: Settings of the short runs :func:`bench_processes` times: no L2 pre-training, no VCN, no sample
#: grids or BatchNorm re-estimation, so the epochs' seconds are the GAN steps'.
SCALING_OVERRIDES = ("pretrain_epochs=0", "vc_weight=0", "num_samples=0", "bn_recalibration_batches=0")


def bench_processes(
    profile: str | Profile,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    processes: tuple[int, ...] = (1, 2),
    train_cases: int = 128,
    print_fn: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """XRayGAN training throughput on 1, 2, … processes: real runs of ``train_cases`` cases under torchrun.

    Each run is ``torchrun --standalone --nproc_per_node N -m xrg train xraygan`` (one process
    without torchrun) with :data:`SCALING_OVERRIDES`, the global batch of the profile, and the
    machine's cores shared out (``OMP_NUM_THREADS`` = cores // N). A row per run and GAN stage:
    images/s over its epochs (the loop's own count: every rank's images over the slowest rank's
    seconds), and the run's wall time with start-up.
    """
    import subprocess
    import sys

    from xrg.notebook import read_metrics

    profile = _profile(profile)
    cores = os.cpu_count() or 1
    rows = []
    for count in processes:
        run = Path(out_dir) / f"processes_{count}"
        args = ["train", "xraygan", "--profile", str(profile.path or profile.name), "--data", str(data_dir),
                "--out", str(run), "--quiet", "--set", f"train_cases={train_cases}"]  # fmt: skip
        args += [word for item in SCALING_OVERRIDES for word in ("--set", item)]
        launcher = [sys.executable, "-m", "xrg"] if count == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={count}", "-m", "xrg"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // count))}
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            env.pop(name, None)
        start = time.perf_counter()
        result = subprocess.run([*launcher, *args], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"the {count}-process run failed ({result.returncode}): {result.stderr[-2000:]}")
        for stage_rows in _by_stage(read_metrics(run, kind="xraygan")):
            images = sum(r["images_per_s"] * r["seconds"] for r in stage_rows)
            seconds = sum(r["seconds"] for r in stage_rows)
            row = {"processes": count, "threads_per_process": max(1, cores // count), "stage": stage_rows[0]["stage"],
                   "image_size": stage_rows[0]["image_size"], "images_per_s": images / seconds, "wall_seconds": wall}  # fmt: skip
            rows.append(row)
            print_fn(
                f"{count} process(es): stage {row['stage']} ({row['image_size']}px) {row['images_per_s']:.1f} images/s"
            )
    return rows


def _by_stage(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    stages: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("phase") == "gan":
            stages.setdefault(int(row["stage"]), []).append(row)
    return [stages[key] for key in sorted(stages)]
