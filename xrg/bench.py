"""Benchmarks that print their figures (``xrg bench ...``).

:func:`bench_data` measures how fast the CT phantom (:mod:`xrg.data.phantom`) renders
frontal/lateral pairs with several worker processes, the way a dataset build uses it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import time
from typing import Any, Sequence

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
