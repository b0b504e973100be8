"""Benchmarks that print their figures (``xrg bench ...``).

:func:`bench_data` measures how fast the CT phantom (:mod:`xrg.data.phantom`) renders
frontal/lateral pairs with several worker processes, the way a dataset build uses it.
:func:`bench_explorer` times the teaching report explorer's responses over a trained run.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from xrg.data.findings import Finding
from xrg.errors import ConfigError

#: The findings the benchmark draws: a fixed mix, each pair gets one entry (seeded).
BENCH_FINDINGS: tuple[tuple[Finding, ...], ...] = (
    (),
    (Finding("cardiomegaly", severity="mild"),),
    (Finding("pleural_effusion", side="right", severity="moderate"),),
    (Finding("opacity", side="left", zone="lower"),),
    (Finding("nodule", side="right", zone="upper", severity="moderate"),),
    (Finding("pacemaker"), Finding("cardiomegaly", severity="moderate")),
    (Finding("edema", severity="moderate"), Finding("pleural_effusion", side="bilateral", severity="mild")),
    (Finding("atelectasis", side="left", zone="lower", severity="mild"),),
    (Finding("emphysema", severity="severe"),),
    (Finding("pneumothorax", side="right", severity="moderate"),),
    (Finding("calcified_granuloma", side="left"), Finding("granuloma", side="right")),
    (Finding("central_line", side="right"),),
    (Finding("sternotomy"), Finding("cardiomegaly", severity="mild")),
    (Finding("scoliosis", side="right", severity="moderate"),),
    (Finding("hypoinflation", severity="moderate"), Finding("atelectasis", side="bilateral", zone="lower")),
)

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_RENDERER = None
_INIT_SECONDS = 0.0


def _init_worker(volume_size: int, threads: int, ready) -> None:
    global _RENDERER, _INIT_SECONDS
    import torch

    torch.set_num_threads(threads)
    from xrg.data.phantom import PhantomRenderer

    start = time.perf_counter()
    _RENDERER = PhantomRenderer(volume_size=volume_size)
    _INIT_SECONDS = time.perf_counter() - start
    ready.wait()


def _render(job: tuple[int, int, int]) -> tuple[float, float, int]:
    index, seed, size = job
    start = time.perf_counter()
    _RENDERER.render(list(BENCH_FINDINGS[index]), seed=seed, size=size)
    elapsed = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return elapsed, _INIT_SECONDS, peak_kib


def bench_data(sizes: Sequence[int] = (128, 256), n_pairs: int = 40, workers: int = 2) -> dict[str, Any]:
    """Render ``n_pairs`` random-finding pairs per image size with ``workers`` processes.

    Each worker builds its renderer once (from the on-disk cache, which this process makes
    first if needed), then the pairs are timed end to end. Prints a table and returns
    ``{"rows": [...]}`` with pairs/s, ms per pair (per process), peak RSS per worker and
    the workers' start-up (renderer init) time.
    """
    from xrg.data.phantom import MAX_SIZE, MIN_SIZE, PhantomRenderer, volume_size_for

    if n_pairs < 1 or workers < 1:
        raise ConfigError(f"n_pairs and workers must be positive, got {n_pairs} and {workers}")
    for size in sizes:
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise ConfigError(f"image size must be in {MIN_SIZE}..{MAX_SIZE}, got {size}")
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = mp.get_context("spawn")
    rng = np.random.default_rng(0)
    rows = []
    for size in sizes:
        volume_size = volume_size_for(size)
        start = time.perf_counter()
        PhantomRenderer(volume_size=volume_size)  # make the cache once, before the workers read it
        cache_seconds = time.perf_counter() - start
        jobs = [(int(rng.integers(len(BENCH_FINDINGS))), int(seed), int(size)) for seed in range(n_pairs)]
        ready = context.Barrier(workers + 1)
        saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
        os.environ.update({name: str(threads) for name in _THREAD_VARIABLES})  # read by the workers' BLAS
        try:
            with context.Pool(workers, initializer=_init_worker, initargs=(volume_size, threads, ready)) as pool:
                ready.wait()  # every worker has built its renderer
                start = time.perf_counter()
                results = pool.map(_render, jobs, chunksize=1)
                wall = time.perf_counter() - start
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        per_pair = [r[0] for r in results]
        rows.append(
            {
                "size": size,
                "volume_size": volume_size,
                "workers": workers,
                "pairs": n_pairs,
                "seconds": round(wall, 3),
                "pairs_per_s": round(n_pairs / wall, 2),
                "ms_per_pair": round(1000.0 * float(np.mean(per_pair)), 1),
                "peak_rss_mb": round(max(r[2] for r in results) / 1024.0, 1),
                "worker_init_s": round(max(r[1] for r in results), 2),
                "main_init_s": round(cache_seconds, 2),
            }
        )
    print(f"{'size':>5} {'volume':>6} {'workers':>7} {'pairs/s':>8} {'ms/pair':>8} {'peak RSS MB':>11} {'init s':>6}")
    for row in rows:
        print(
            f"{row['size']:>5} {row['volume_size']:>6} {row['workers']:>7} {row['pairs_per_s']:>8.2f} "
            f"{row['ms_per_pair']:>8.1f} {row['peak_rss_mb']:>11.1f} {row['worker_init_s']:>6.2f}"
        )
    return {"rows": rows}


def bench_explorer(
    run_dir: str, data_dir: str | None = None, n: int = 10, seed: int = 0, print_fn=print
) -> dict[str, Any]:
    """Response times of the report explorer (:mod:`xrg.explorer`) over a run: ``generate``
    of ``n`` reports (the test split of ``data_dir``, those with findings to edit first; else
    built-in reports) and each kind of edit button on them (negate, milder, more severe, flip
    side, make present), at the run's resolution. Prints median and p90 seconds per action;
    returns ``{"image_size", "init_s", "failed", "rows": [...]}``."""
    from xrg.explorer import ReportExplorer, load_report_choices, time_responses, toggles
    from xrg.train.benchmarks import BENCH_REPORTS

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    start = time.perf_counter()
    explorer = ReportExplorer.from_run(run_dir, seed=seed)
    explorer.warmup()
    init_s = time.perf_counter() - start
    if data_dir is not None:
        choices = load_report_choices(data_dir, split="test")
        reports = [(c.text, c.patient_seed) for c in sorted(choices, key=lambda c: not toggles(c.text))[:n]]
    else:
        reports = [(BENCH_REPORTS[i % len(BENCH_REPORTS)], seed + i) for i in range(n)]
    times, failed = time_responses(explorer, reports)
    rows = [
        {"action": action, "n": len(values), "median_s": float(np.median(values)),
         "p90_s": float(np.percentile(values, 90))}
        for action, values in times.items() if values
    ]  # fmt: skip
    size = explorer.image_size
    print_fn(f"report explorer over {run_dir} at {size}² (phantom CT grid {explorer.renderer.volume_size}), "
             f"{len(reports)} reports; start-up {init_s:.2f} s")  # fmt: skip
    print_fn(f"{'action':<12} {'n':>4} {'median s':>9} {'p90 s':>7}")
    for row in rows:
        print_fn(f"{row['action']:<12} {row['n']:>4} {row['median_s']:>9.3f} {row['p90_s']:>7.3f}")
    if failed:
        print_fn(f"{failed} listed edit(s) failed verification and were not timed")
    return {"image_size": size, "init_s": init_s, "failed": failed, "rows": rows}


def bench_pggan_explorer(
    run_dir: str,
    classifier: str,
    evaluators: str | None = None,
    class_name: str | None = None,
    repeats: int = 5,
    seed: int = 0,
    search_steps: int = 100,
    print_fn=print,
) -> dict[str, Any]:
    """Response times of the PGGAN latent explorer (:mod:`xrg.latent.explorer`) over a trained run and
    search classifier (and, with ``evaluators``, the independent evaluator beside it): a new patient,
    a direction move, undo, a patient series and a class search (up to ``search_steps``), each
    ``repeats`` times. Prints median and p90 seconds per response; returns ``{"image_size", "rows"}``."""
    from xrg.eval.generators import checkpoint_path
    from xrg.latent.explorer import LatentExplorer
    from xrg.latent.sample import confirming_classifier
    from xrg.latent.timing import time_latent_responses
    from xrg.models.pggan import PGGAN
    from xrg.train.pathology import load_search_classifier

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats must be a positive integer, got {repeats!r}")
    start = time.perf_counter()
    model = PGGAN.from_checkpoint(checkpoint_path(run_dir))
    search_classifier = load_search_classifier(classifier)
    judge = confirming_classifier(evaluators) if evaluators else None
    explorer = LatentExplorer(model, search_classifier, evaluator=judge, direction_seed=seed, search_steps=search_steps)
    init_s = time.perf_counter() - start
    name = class_name or search_classifier.class_names[0]
    search_classifier.class_index(name)
    times = time_latent_responses(explorer, name, repeats=repeats, seed=seed)
    rows = [
        {"response": response, "n": len(values), "median_s": float(np.median(values)),
         "p90_s": float(np.percentile(values, 90))}
        for response, values in times.items() if values
    ]  # fmt: skip
    size = model.config.final_size
    print_fn(f"PGGAN latent explorer over {run_dir} at {size}², class {name}, "
             f"{'with' if judge else 'without'} the evaluator; start-up {init_s:.2f} s")  # fmt: skip
    print_fn(f"{'response':<12} {'n':>4} {'median s':>9} {'p90 s':>7}")
    for row in rows:
        print_fn(f"{row['response']:<12} {row['n']:>4} {row['median_s']:>9.3f} {row['p90_s']:>7.3f}")
    return {"image_size": size, "init_s": init_s, "rows": rows}


def _extent(mask: np.ndarray, axis: int) -> int:
    """Pixels from the first to the last row (``axis`` 0) or column (1) that ``mask`` touches."""
    hit = np.flatnonzero(mask.any(axis=1 - axis))
    return int(hit[-1] - hit[0] + 1) if len(hit) else 0


def _frontal_masks(renderer, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the lungs and the heart of normal patient ``seed`` show on its frontal view:
    rays that cross at least 2 mm of the organ."""
    from xrg.data.phantom import HEART, LUNG_LABELS

    lung, _ = renderer.project_structure(LUNG_LABELS, seed=seed, size=size)
    heart, _ = renderer.project_structure((HEART,), seed=seed, size=size)
    return lung > 2.0, heart > 2.0


def variety_measurements(renderer, seed: int, size: int, masks=None) -> dict[str, float]:
    """Anatomical measurements of normal patient ``seed`` on its frontal view, in pixels at
    ``size``: lung height (apex to the lowest lung row), thoracic width (outer edge of the
    right lung to that of the left, the inner rib margins on a radiograph), heart width and
    their ratio (the cardiothoracic ratio). Taken from the projected organ masks, where a
    ray crosses at least 2 mm of the organ (``masks``: those of :func:`_frontal_masks`)."""
    lung, heart = masks if masks is not None else _frontal_masks(renderer, seed, size)
    lung_width = max((_extent(row[None], 1) for row in lung), default=0)
    heart_width = _extent(heart, 1)
    return {
        "lung_height_px": float(_extent(lung, 0)),
        "thoracic_width_px": float(lung_width),
        "heart_width_px": float(heart_width),
        "cardiothoracic_ratio": heart_width / max(lung_width, 1),
    }


def bench_variety(
    n_patients: int = 16, size: int = 64, first_seed: int = 0, volume_size: int | None = None, print_fn=print
) -> dict[str, Any]:
    """How different the phantom's normal patients are: ``n_patients`` seeds rendered with no
    finding at ``size``. Prints and returns the mean pairwise pixel distance of the frontal
    renders (mean absolute difference and RMS, in display units 0..1), their mean distance
    to the population-mean image, the mean pairwise overlap (IoU) of the patients' frontal
    lung masks (shape alone, whatever the exposure), and the mean, standard deviation and
    range of each :func:`variety_measurements` figure over the patients. A population of near copies of
    one body shows small distances and near-zero spreads. ``volume_size`` is the CT grid
    (default :func:`~xrg.data.phantom.volume_size_for` the size)."""
    from xrg.data.phantom import MAX_SIZE, MIN_SIZE, PhantomRenderer, volume_size_for

    if isinstance(n_patients, bool) or not isinstance(n_patients, int) or n_patients < 2:
        raise ConfigError(f"n_patients must be an integer of at least 2, got {n_patients!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"image size must be an integer in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
    renderer = PhantomRenderer(volume_size=volume_size or volume_size_for(size))
    seeds = range(first_seed, first_seed + n_patients)
    frontal = np.stack([renderer.render([], seed=seed, size=size).frontal for seed in seeds]).astype(np.float64)
    masks = [_frontal_masks(renderer, seed, size) for seed in seeds]
    measured = [variety_measurements(renderer, seed, size, pair) for seed, pair in zip(seeds, masks)]
    lungs = np.stack([lung for lung, _ in masks]).reshape(n_patients, -1).astype(np.float64)
    flat = frontal.reshape(n_patients, -1)
    upper = np.triu_indices(n_patients, k=1)
    absolute = np.abs(flat[:, None, :] - flat[None, :, :]).mean(axis=2)[upper]
    squared = np.sqrt(((flat[:, None, :] - flat[None, :, :]) ** 2).mean(axis=2))[upper]
    to_mean = np.abs(flat - flat.mean(axis=0)).mean(axis=1)
    overlap = lungs @ lungs.T
    union = lungs.sum(axis=1)[:, None] + lungs.sum(axis=1)[None, :] - overlap
    result: dict[str, Any] = {
        "patients": n_patients,
        "size": size,
        "volume_size": renderer.volume_size,
        "pairwise_mad": float(absolute.mean()),
        "pairwise_rmse": float(squared.mean()),
        "mad_to_mean_image": float(to_mean.mean()),
        "lung_mask_iou": float((overlap / np.maximum(union, 1.0))[upper].mean()),
        "measurements": {},
    }
    print_fn(f"{n_patients} normal patients (seeds {first_seed}..{first_seed + n_patients - 1}) at {size}², "
             f"CT grid {renderer.volume_size}")  # fmt: skip
    print_fn(f"frontal pairwise mean |difference| {result['pairwise_mad']:.4f}, RMS {result['pairwise_rmse']:.4f}; "
             f"to the mean image {result['mad_to_mean_image']:.4f}; lung masks' pairwise IoU "
             f"{result['lung_mask_iou']:.3f}")  # fmt: skip
    print_fn(f"{'measurement':<22} {'mean':>8} {'std':>7} {'min':>7} {'max':>7} {'cv %':>6}")
    for name in measured[0]:
        values = np.array([m[name] for m in measured])
        row = {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
               "max": float(values.max())}  # fmt: skip
        result["measurements"][name] = row
        cv = 100.0 * row["std"] / row["mean"] if row["mean"] else 0.0
        print_fn(f"{name:<22} {row['mean']:>8.3f} {row['std']:>7.3f} {row['min']:>7.3f} {row['max']:>7.3f} {cv:>6.1f}")
    return result


def bench_diffusion(
    profile: str = "cpu",
    checkpoint: str | os.PathLike | None = None,
    step_counts: Sequence[int] = (5, 10, 25, 50),
    images: int = 16,
    repeats: int = 3,
    ancestral: bool = True,
    guidance: float = 1.0,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Images per second of DiffuseVAE sampling: DDIM at each of ``step_counts`` and ancestral over all T.

    Times a trained model (``checkpoint``: a DiffuseVAE run directory or checkpoint) or, without
    one, an untrained model of the profile's ``diffusevae`` settings (the speed depends on the
    architecture, not the weights). Prints one line per sampler and returns the rows; the
    quality at each step count is in the DiffuseVAE chapter (it needs the evaluators).
    """
    import torch

    from xrg.eval.diffusion import sampling_speed
    from xrg.models.diffusevae import DiffuseVAE
    from xrg.pipelines import diffusevae_checkpoint

    if checkpoint is not None:
        model = DiffuseVAE.from_checkpoint(diffusevae_checkpoint(checkpoint), map_location=device)
        source = str(checkpoint)
    else:
        from xrg.profiles import load_profile
        from xrg.train.diffusevae import DiffuseVAETrainConfig

        config = DiffuseVAETrainConfig.from_profile(load_profile(profile))
        torch.manual_seed(0)
        model = DiffuseVAE(config.model_config(vocab_size=3)).to(device).eval()
        source = f"untrained, profile {profile}"
    timesteps = model.schedule.timesteps
    counts = sorted({int(s) for s in step_counts if 1 <= int(s) <= timesteps})
    if not counts and not ancestral:
        raise ConfigError(f"no step count in 1..{timesteps} to time")
    print(f"DiffuseVAE sampling ({source}; {model.image_size}² {model.view}, T = {timesteps}, "
          f"{images} images per batch, {torch.get_num_threads()} threads, {device}, median of {repeats})")  # fmt: skip
    rows = sampling_speed(model, [*counts, *([None] if ancestral else [])], count=images, repeats=repeats,
                          guidance=guidance)  # fmt: skip
    for row in rows:
        print(f"  {row['sampler']:>9} {row['steps']:>5} steps: {row['images_per_s']:8.2f} images/s "
              f"({row['seconds']:.2f} s per batch)")  # fmt: skip
    return rows
