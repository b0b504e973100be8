"""Execute the book headlessly: data build, then every notebook with papermill, then HTML.

``run_book`` executes ``notebooks/NN_name.ipynb`` in order into ``book/executed/`` (the
folder ``_toc.yml`` points to) with the profile's parameters. A notebook is executed again
only when its source, its parameters or the library's code changed since its last
successful run (a stamp per notebook records that), so re-running the book with nothing
changed is quick. The last notebook, :data:`PROVENANCE_NOTEBOOK`, reads the provenance every
other executed notebook recorded and tabulates the run for the intro page; it is executed
again whenever any other executed notebook changed.

``build_html`` renders the executed notebooks and the prose pages with Jupyter Book
(``execute_notebooks: "off"``), warnings as errors by default. The JavaScript the pages
need (``@jupyter-widgets/html-manager`` for the saved widget state, MathJax for formulas) is
served from the book's own static files (:func:`ensure_static_assets`), not from a CDN, so
the rendered book reads fully offline.

The data, run and output folders default to the checkout's ``data/``, ``runs/``,
``book/executed`` and ``_build``; the tests build the tiny book elsewhere.

A profile's ``book`` section sets how the notebooks run (:func:`book_settings`):
``kernel_threads`` caps the BLAS/OpenMP threads of every notebook kernel (and of the data
build in this process), ``parallel_notebooks`` executes notebooks that do not need each
other's results side by side, each in its own process (:data:`NOTEBOOK_NEEDS`). What several
notebooks read (the data, the evaluators) is made before any kernel starts.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from xrg.errors import ConfigError
from xrg.io import atomic_write_json, read_json_mapping
from xrg.profiles import load_profile, read_yaml_file

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = ROOT / "notebooks"
EXECUTED_DIR = ROOT / "book" / "executed"
STATIC_DIR = ROOT / "book" / "_static"
DATA_ROOT = ROOT / "data"
RUNS_ROOT = ROOT / "runs"
BUILD_DIR = ROOT / "_build"

#: Executed last; tabulates the provenance of every other executed notebook.
PROVENANCE_NOTEBOOK = "99_provenance"

#: JavaScript the rendered pages need, served from the book's static files instead of a CDN
#: so the book reads offline: npm package, version, the registry's sha512, what to keep (a
#: path prefix inside the package, stripped) and the folder under ``book/_static``.
STATIC_ASSETS: dict[str, dict[str, Any]] = {
    # Renders the saved widget state of the report explorer (``_config.yml``: nb_ipywidgets_js).
    "jupyter-widgets": {
        "package": "@jupyter-widgets/html-manager",
        "version": "1.0.15",
        "tarball": "https://registry.npmjs.org/@jupyter-widgets/html-manager/-/html-manager-1.0.15.tgz",
        "integrity": "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
        "prefix": "package/dist/",
        "keep": ("embed.js", "embed.js.LICENSE.txt", ".woff", ".woff2", ".ttf", ".eot", ".svg"),
        "check": "embed.js",
    },
    # Typesets the chapters' formulas (``_config.yml``: mathjax_path).
    "mathjax": {
        "package": "mathjax",
        "version": "3.2.2",
        "tarball": "https://registry.npmjs.org/mathjax/-/mathjax-3.2.2.tgz",
        "integrity": "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
        "prefix": "package/es5/",
        "keep": ("tex-chtml.js", "output/chtml/fonts/woff-v2/", "input/tex/extensions/", "ui/", "a11y/"),
        "check": "tex-chtml.js",
    },
}


#: Environment variables that set the intra-op thread count of torch, OpenMP and the BLAS
#: libraries in a freshly started process (a notebook kernel reads them at start-up).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

#: Settings of a profile's ``book`` section and their defaults.
BOOK_SETTINGS: dict[str, Any] = {
    # Threads per notebook kernel; None leaves torch's default (one per core). The tiny
    # models gain nothing from a second thread, and on a busy machine OpenMP threads that
    # wait for a descheduled partner burn CPU instead of working: measured on 2 cores with
    # other work running, a tiny baseline run took 31 s with 1 thread and 195 s with 2.
    "kernel_threads": None,
    # Notebooks executed at once (each in its own kernel, as :data:`NOTEBOOK_NEEDS` allows).
    # The tiny book's notebooks are mostly kernel start-up, imports and one-thread work, so two
    # at a time use both cores of a small machine; a real run trains on every core, one at a time.
    "parallel_notebooks": 1,
}


def book_settings(profile_name: str) -> dict[str, Any]:
    """The profile's ``book`` section over :data:`BOOK_SETTINGS`, checked."""
    profile = load_profile(profile_name)
    section = profile.section("book")
    unknown = sorted(set(section) - set(BOOK_SETTINGS))
    if unknown:
        raise ConfigError(f"profile {profile.name!r}: unknown book settings {unknown}; known: {sorted(BOOK_SETTINGS)}")
    settings = {**BOOK_SETTINGS, **section}
    threads = settings["kernel_threads"]
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(
            f"profile {profile.name!r}: book kernel_threads must be a positive integer or null, got {threads!r}"
        )
    parallel = settings["parallel_notebooks"]
    if isinstance(parallel, bool) or not isinstance(parallel, int) or not 1 <= parallel <= 16:
        raise ConfigError(
            f"profile {profile.name!r}: book parallel_notebooks must be an integer in 1..16, got {parallel!r}"
        )
    return settings


@contextlib.contextmanager
def thread_limit(threads: int | None) -> Iterator[None]:
    """Within the block, processes started get ``threads`` BLAS/OpenMP threads and this
    process's torch uses as many; everything is restored afterwards. ``None``: no change."""
    if threads is None:
        yield
        return
    import torch

    saved_env = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    saved_threads = torch.get_num_threads()
    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def notebook_names() -> list[str]:
    """The book's notebooks in reading order (``NN_name``); the provenance notebook is last."""
    return sorted(p.stem for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def library_fingerprint(profiles_dir: str | os.PathLike | None = None) -> str:
    """A hash of the library's source and of the profiles (``profiles_dir``, the project's by
    default), so a change of code or of a training setting marks executed notebooks stale: a
    notebook trains its runs from the profile, which its parameters do not spell out."""
    from xrg.profiles import PROFILES_DIR

    digest = hashlib.sha256()
    for path in sorted((ROOT / "xrg").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    for path in sorted(Path(profiles_dir or PROFILES_DIR).glob("*.yaml")):
        digest.update(f"profiles/{path.name}".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def notebook_parameters(
    profile_name: str,
    notebook: str,
    overrides: dict[str, Any] | None = None,
    data_root: str | os.PathLike = DATA_ROOT,
    runs_root: str | os.PathLike = RUNS_ROOT,
    executed_dir: str | os.PathLike = EXECUTED_DIR,
) -> dict[str, Any]:
    """Papermill parameters of one notebook: the profile's values plus common settings."""
    import papermill

    profile = load_profile(profile_name)
    runs = Path(runs_root) / profile.name
    common: dict[str, Any] = {
        "profile": profile.name,
        "data_dir": str(Path(data_root) / profile.name),
        "run_dir": str(runs / "xraygan"),
        "pggan_dir": str(runs / "pggan"),
        "search_dir": str(runs / "search"),
        "experiment_dir": str(runs / "experiments"),
        "diffusevae_dir": str(runs / "diffusevae"),
        "executed_dir": str(executed_dir),
        "seed": profile.seed,
    }
    declared = papermill.inspect_notebook(str(NOTEBOOKS_DIR / f"{notebook}.ipynb"))
    params = {key: value for key, value in common.items() if key in declared}
    params.update(profile.notebook_params(notebook))
    params.update((overrides or {}).get(notebook, {}))
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ConfigError(
            f"parameters {unknown} given for notebook {notebook!r}, which declares only {sorted(declared)}"
        )
    return params


def _executed_digest(executed_dir: Path, names: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        path = executed_dir / f"{name}.ipynb"
        digest.update(name.encode() + (path.read_bytes() if path.is_file() else b"<missing>"))
    return digest.hexdigest()


def _stamp(notebook: str, params: dict[str, Any], fingerprint: str, extra: str = "") -> str:
    source = (NOTEBOOKS_DIR / f"{notebook}.ipynb").read_bytes()
    payload = json.dumps(params, sort_keys=True).encode() + source + fingerprint.encode() + extra.encode()
    return hashlib.sha256(payload).hexdigest()


def _read_overrides(params_file: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    if params_file is None:
        return {}
    path = Path(params_file)
    if not path.is_file():
        raise ConfigError(f"parameters file {path} does not exist")
    data = read_yaml_file(path, "parameters file") or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"parameters file {path} must map notebook names to parameter mappings")
    unknown = sorted(set(data) - set(notebook_names()))
    if unknown:
        raise ConfigError(f"parameters file {path} names unknown notebooks {unknown}; available: {notebook_names()}")
    return data


def execute_notebook(
    notebook: str,
    params: dict[str, Any],
    output_dir: str | os.PathLike = EXECUTED_DIR,
    progress: bool = True,
    threads: int | None = None,
) -> Path:
    """Execute one notebook with papermill into ``output_dir``; returns the executed path.

    ``threads`` caps the kernel's BLAS/OpenMP (and so torch's) threads; None: their defaults.

    The executed copy is written under a temporary name and moved into place only when
    the run succeeded, so a failed run never replaces the last good executed notebook;
    the failed copy is kept as ``NN_name.failed.ipynb`` to read the traceback in.
    """
    import papermill

    source = NOTEBOOKS_DIR / f"{notebook}.ipynb"
    if not source.is_file():
        raise ConfigError(f"notebook {notebook!r} does not exist; available: {', '.join(notebook_names())}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / f"{notebook}.ipynb"
    partial = output_dir / f".{notebook}.running.ipynb"
    try:
        with thread_limit(threads):  # the kernel inherits this environment when papermill starts it
            papermill.execute_notebook(
                str(source),
                str(partial),
                parameters=params,
                kernel_name="python3",
                cwd=str(NOTEBOOKS_DIR),
                progress_bar=progress,
                log_output=False,
            )
    except BaseException:
        if partial.is_file():
            os.replace(partial, output_dir / f"{notebook}.failed.ipynb")
        raise
    os.replace(partial, output)
    (output_dir / f"{notebook}.failed.ipynb").unlink(missing_ok=True)
    return output


def run_book(
    profile_name: str = "cpu",
    params_file: str | os.PathLike | None = None,
    only: Sequence[str] | None = None,
    force: bool = False,
    executed_dir: str | os.PathLike = EXECUTED_DIR,
    data_root: str | os.PathLike = DATA_ROOT,
    runs_root: str | os.PathLike = RUNS_ROOT,
    progress: bool = True,
) -> dict[str, float]:
    """Build the profile's data and the evaluators the notebooks to execute read
    (:func:`prepare_evaluators`), then execute the (selected) notebooks; returns seconds per step.

    ``only`` selects notebooks; the provenance notebook is brought up to date as well
    whenever it is stale, so the intro page always describes the notebooks it links to.
    A notebook that is up to date takes 0 s. The profile's ``book`` section
    (:func:`book_settings`) caps the threads of the data build and of every kernel, and may
    execute independent notebooks side by side (:func:`_execute_in_parallel`).
    """
    from xrg.data.build import DataBuildConfig, build_dataset

    profile = load_profile(profile_name)
    settings = book_settings(profile_name)
    threads, parallel = settings["kernel_threads"], settings["parallel_notebooks"]
    executed_dir, data_root = Path(executed_dir), Path(data_root)
    overrides = _read_overrides(params_file)
    names = notebook_names()
    selected = list(only) if only else list(names)
    unknown = [n for n in selected if n not in names]
    if unknown:
        raise ConfigError(f"unknown notebooks {unknown}; available: {', '.join(names)}")
    if PROVENANCE_NOTEBOOK in names and PROVENANCE_NOTEBOOK not in selected:
        selected.append(PROVENANCE_NOTEBOOK)
    selected = [n for n in names if n in selected]  # reading order, provenance last
    timings: dict[str, float] = {}

    start = time.perf_counter()
    config = DataBuildConfig.from_profile(profile.data, seed=profile.seed)
    print(f">> data: {data_root / profile.name}", flush=True)
    with thread_limit(threads):
        print(build_dataset(data_root / profile.name, config, progress=progress), flush=True)
    timings["data"] = time.perf_counter() - start

    fingerprint = library_fingerprint()  # once per run: it reads every source file of the library
    stamps_path = executed_dir / ".stamps.json"
    stamps = (
        read_json_mapping(stamps_path, "book stamp file", "delete it: every notebook is then re-executed once")
        if stamps_path.is_file() else {}
    )  # fmt: skip

    def stale(notebook: str, extra: str = "") -> tuple[dict[str, Any], str] | None:
        """The notebook's parameters and stamp when it must be executed, else None (up to date)."""
        params = notebook_parameters(profile.name, notebook, overrides, data_root, runs_root, executed_dir)
        stamp = _stamp(notebook, params, fingerprint, extra)
        if not force and (executed_dir / f"{notebook}.ipynb").is_file() and stamps.get(notebook) == stamp:
            print(f">> {notebook}: up to date", flush=True)
            return None
        print(f">> {notebook}: executing with {params}", flush=True)
        return params, stamp

    def executed(notebook: str, seconds: float, stamp: str) -> None:
        timings[notebook] = seconds
        stamps[notebook] = stamp
        atomic_write_json(stamps_path, stamps)
        print(f">> {notebook}: {seconds:.0f} s", flush=True)

    chapters = [n for n in selected if n != PROVENANCE_NOTEBOOK]
    todo: dict[str, tuple[dict[str, Any], str]] = {}
    for notebook in chapters:
        job = stale(notebook)
        if job is None:
            timings[notebook] = 0.0
        else:
            todo[notebook] = job
    readers = [todo[n][0] for n in todo if n in EVALUATOR_NOTEBOOKS]
    if readers:  # before any kernel, on the cores the kernels will share (none of them then makes them)
        start = time.perf_counter()
        with thread_limit(threads * parallel if threads is not None else None):
            prepare_evaluators(readers, progress=progress)
        timings["evaluators"] = time.perf_counter() - start
        print(f">> evaluators: {timings['evaluators']:.0f} s", flush=True)
    if parallel > 1 and len(todo) > 1:
        _execute_in_parallel(todo, executed_dir, parallel, threads, executed)
    else:
        for notebook, (params, stamp) in todo.items():
            start = time.perf_counter()
            execute_notebook(notebook, params, executed_dir, progress=progress, threads=threads)
            executed(notebook, time.perf_counter() - start, stamp)
    if PROVENANCE_NOTEBOOK in selected:  # last: it tabulates what the others recorded
        job = stale(PROVENANCE_NOTEBOOK, _executed_digest(executed_dir, [n for n in names if n != PROVENANCE_NOTEBOOK]))
        if job is None:
            timings[PROVENANCE_NOTEBOOK] = 0.0
        else:
            start = time.perf_counter()
            execute_notebook(PROVENANCE_NOTEBOOK, job[0], executed_dir, progress=progress, threads=threads)
            executed(PROVENANCE_NOTEBOOK, time.perf_counter() - start, job[1])
    steps = ("data", "evaluators", *selected) if "evaluators" in timings else ("data", *selected)
    return {name: timings[name] for name in steps}  # reading order


#: The notebooks that read the evaluators (the finding classifier, the evaluation VCN and their
#: cohort, :func:`xrg.train.evaluators.ensure_evaluators`). :func:`run_book` makes them first,
#: with every core the kernels share, whenever one of these is executed: made inside 05 they
#: kept one kernel busy for 9 minutes while the chapters after it could only wait.
EVALUATOR_NOTEBOOKS = ("05_evaluation", "06_baselines_ablations", "07_pggan_latent", "08_diffusevae_moco")


def prepare_evaluators(notebook_params: Sequence[dict[str, Any]], progress: bool = True) -> list[Path]:
    """Load or make the evaluators that notebooks with these parameters will read; their directories.

    Each distinct (profile, ``data_dir``, ``experiment_dir``/evaluators) is prepared once, with the
    paths read as the notebooks read them (relative to the notebooks directory). The notebooks'
    own ``ensure_evaluators`` calls then only load what is there.
    """
    from xrg.eval.evaluators import EvaluatorConfig
    from xrg.train.evaluators import ensure_evaluators

    prepared: list[Path] = []
    seen: set[tuple[str, Path, Path]] = set()
    for params in notebook_params:
        missing = sorted({"profile", "data_dir", "experiment_dir"} - set(params))
        if missing:
            raise ConfigError(f"evaluator notebook parameters lack {missing}: {sorted(params)}")
        data_dir = NOTEBOOKS_DIR / params["data_dir"]
        out_dir = NOTEBOOKS_DIR / params["experiment_dir"] / "evaluators"
        key = (str(params["profile"]), data_dir.resolve(), out_dir.resolve())
        if key in seen:
            continue
        seen.add(key)
        print(f">> evaluators: {out_dir}", flush=True)
        ensure_evaluators(EvaluatorConfig.from_profile(load_profile(key[0])), data_dir, out_dir, progress=progress)
        prepared.append(out_dir)
    return prepared


#: What each notebook reads that another notebook makes, by the notebooks that make it. With
#: ``parallel_notebooks`` above 1 a notebook starts once these finished (or were up to date).
#: A notebook not listed here waits for every notebook before it, the safe choice for a new one.
NOTEBOOK_NEEDS: dict[str, tuple[str, ...]] = {
    "01_data": (),  # the data directory only
    "02_encoder": (),  # trains the profile's XRayGAN run (ensure_xraygan_run) when it is missing
    "03_vcn": ("02_encoder",),
    "04_xraygan": ("02_encoder", "06_baselines_ablations"),  # 06 trains the canonical-target row 04 shows
    # The evaluators that 05-08 read are made before any notebook starts (EVALUATOR_NOTEBOOKS).
    # 05 scores 02's run and the controls under experiment_dir; 06 would score the same controls
    # when missing, so it waits for 05 and then only reads them.
    "05_evaluation": ("02_encoder",),
    # its own runs under experiment_dir; the XRayGAN row's first seed is 02's run, reused
    "06_baselines_ablations": ("02_encoder", "05_evaluation"),
    # 07 trains its own PGGAN and search classifiers and reads only the evaluators
    "07_pggan_latent": (),
    # 08 trains its own DiffuseVAE runs; it reads the XRayGAN run (02) for the side-by-side comparison
    "08_diffusevae_moco": ("02_encoder",),
    "09_report_explorer": ("02_encoder",),
}

#: Seconds between two notebook starts when they run side by side: a CI run with two kernels
#: starting at once lost one ("Kernel died before replying to kernel_info").
KERNEL_START_GAP = 5.0

_CHILD = """
import json, sys
from xrg.book import execute_notebook
execute_notebook(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], progress=False)
"""


def _needs(notebook: str) -> set[str]:
    if notebook in NOTEBOOK_NEEDS:
        return set(NOTEBOOK_NEEDS[notebook])
    return {n for n in notebook_names() if n < notebook}


def _execute_in_parallel(
    todo: dict[str, tuple[dict[str, Any], str]],
    executed_dir: Path,
    workers: int,
    threads: int | None,
    executed: Any,
    start_gap: float = KERNEL_START_GAP,
) -> None:
    """Execute the notebooks of ``todo`` (name: (params, stamp)), up to ``workers`` at a time.

    Each runs in its own process (``execute_notebook``; papermill changes the working
    directory, so two cannot share one process) once the notebooks it needs
    (:data:`NOTEBOOK_NEEDS`) among ``todo`` finished; among the ready ones those that others
    wait for go first. ``executed(name, seconds, stamp)`` is called here, in this thread, as
    each one succeeds. After a failure nothing new starts, the running ones finish, and the
    first failure is raised; when this thread is interrupted (Ctrl-C, a test timeout) the
    running notebooks are interrupted too, so no kernel is left behind. Two notebooks never
    start within ``start_gap`` seconds of each other (kernels starting at once can fail).
    """
    import signal
    import threading
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])  # this xrg
    if threads is not None:
        env.update({name: str(threads) for name in THREAD_VARIABLES})
    pending = list(todo)
    needs = {n: _needs(n) & set(todo) for n in pending}
    waited_for = {n: sum(n in needs[m] for m in pending) for n in pending}
    processes: dict[str, subprocess.Popen] = {}
    lock = threading.Lock()
    stopping = threading.Event()
    last_start = [-math.inf]

    def run(notebook: str) -> float:
        start = time.perf_counter()
        params, _ = todo[notebook]
        with lock:
            time.sleep(max(0.0, last_start[0] + start_gap - time.perf_counter()))
            last_start[0] = time.perf_counter()
            if stopping.is_set():
                raise RuntimeError(f"notebook {notebook} not started: the book run was interrupted")
            process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, notebook, json.dumps(params), str(executed_dir)],
                env=env,
                cwd=str(ROOT),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            processes[notebook] = process
        output, _ = process.communicate()
        if process.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-30:])
            raise NotebookFailed(
                f"notebook {notebook} failed (exit status {process.returncode}); the executed copy with its "
                f"traceback is {executed_dir / (notebook + '.failed.ipynb')}:\n{tail}"
            )
        return time.perf_counter() - start

    running: dict[Any, str] = {}
    failure: BaseException | None = None
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xrg-book")
    try:
        while pending or running:
            if failure is None:
                busy = set(pending) | set(running.values())
                ready = sorted((n for n in pending if not needs[n] & busy), key=lambda n: (-waited_for[n], n))
                for notebook in ready[: workers - len(running)]:
                    pending.remove(notebook)
                    running[pool.submit(run, notebook)] = notebook
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                notebook = running.pop(future)
                try:
                    seconds = future.result()
                except BaseException as exc:  # noqa: BLE001 - re-raised below, once the others finished
                    failure = failure or exc
                else:
                    executed(notebook, seconds, todo[notebook][1])
    except BaseException:
        with lock:
            stopping.set()
            for process in processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)  # papermill shuts its kernel down
        for process in processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        raise
    finally:
        pool.shutdown(wait=True)
    if failure is not None:
        raise failure


class NotebookFailed(RuntimeError):
    """A notebook executed in a child process of :func:`run_book` failed."""


def format_timings(timings: dict[str, float]) -> str:
    """A small table of seconds per step (0 s: up to date) and the total."""
    width = max(len(name) for name in timings) if timings else 5
    lines = [f"{name:<{width}}  {seconds:8.1f} s" for name, seconds in timings.items()]
    lines.append(f"{'total':<{width}}  {sum(timings.values()):8.1f} s")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Offline widget manager
# --------------------------------------------------------------------------------------


def _check_integrity(data: bytes, integrity: str, what: str) -> None:
    algorithm, _, expected = integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise ConfigError(f"{what} does not match its registry checksum ({integrity}); refusing to use it")


def _keep(name: str, keep: Sequence[str]) -> bool:
    return any(
        name == k or (k.endswith("/") and name.startswith(k)) or (k.startswith(".") and name.endswith(k)) for k in keep
    )


def ensure_static_assets(
    static_dir: str | os.PathLike = STATIC_DIR, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Unpack every :data:`STATIC_ASSETS` package under ``static_dir``; returns ``static_dir``.

    Each package comes from the npm registry once (checked against the registry's sha512
    and cached under ``~/.cache/xrg/npm``; on an offline machine put the ``.tgz`` there by
    hand) and is unpacked with tarfile's ``data`` filter into a staging folder that replaces
    the old one only when complete.
    """
    from xrg.data.phantom import default_cache_dir

    static_dir = Path(static_dir)
    cache = Path(cache_dir) if cache_dir else default_cache_dir() / "npm"
    for folder, asset in STATIC_ASSETS.items():
        target = static_dir / folder
        marker = target / "VERSION"
        if marker.is_file() and marker.read_text().strip() == asset["version"] and (target / asset["check"]).is_file():
            continue
        what = f"{asset['package']}@{asset['version']}"
        tarball = cache / f"{folder}-{asset['version']}.tgz"
        if tarball.is_file():
            data = tarball.read_bytes()
        else:
            print(f">> fetching {what} from the npm registry", flush=True)
            try:
                with urllib.request.urlopen(asset["tarball"], timeout=60) as response:
                    data = response.read()
            except OSError as exc:
                raise ConfigError(
                    f"cannot fetch {what} from {asset['tarball']} ({exc}); the rendered book needs it. "
                    f"On an offline machine put that file at {tarball}."
                ) from exc
        _check_integrity(data, asset["integrity"], f"{what} ({tarball})")
        if not tarball.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            tarball.write_bytes(data)
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
                for member in archive.getmembers():
                    name = member.name[len(asset["prefix"]) :] if member.name.startswith(asset["prefix"]) else None
                    if not member.isfile() or not name or not _keep(name, asset["keep"]):
                        continue
                    member.name = name
                    archive.extract(member, staging, filter="data")
            if not (staging / asset["check"]).is_file():
                raise ConfigError(f"{what} has no {asset['check']} under {asset['prefix']}; refusing to use it")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        (staging / "VERSION").write_text(asset["version"] + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    return static_dir


# --------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------

_BOOK_SOURCES = ("_config.yml", "_toc.yml")


def _stage_sources(executed_dir: Path, stage: Path) -> Path:
    """A copy of the book's sources whose ``book/executed`` is ``executed_dir``."""
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "book").mkdir(parents=True)
    for name in _BOOK_SOURCES:
        shutil.copy2(ROOT / name, stage / name)
    for page in (ROOT / "book").glob("*.md"):
        shutil.copy2(page, stage / "book" / page.name)
    shutil.copytree(ROOT / "book" / "_ext", stage / "book" / "_ext", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(executed_dir, stage / "book" / "executed", ignore=shutil.ignore_patterns(".*"))
    return stage


def build_html(
    strict: bool = True, executed_dir: str | os.PathLike = EXECUTED_DIR, build_dir: str | os.PathLike = BUILD_DIR
) -> Path:
    """Render the book with Jupyter Book into ``build_dir/html``; returns that folder.

    With the default ``executed_dir`` the checkout is rendered as it is; another executed
    folder is rendered from a copy of the book's sources made under ``build_dir``.
    """
    executed_dir, build_dir = Path(executed_dir), Path(build_dir)
    if build_dir.name != "_build":
        raise ConfigError(f"build_dir must be a folder named _build (Jupyter Book's layout), not {build_dir}")
    missing = [n for n in notebook_names() if not (executed_dir / f"{n}.ipynb").is_file()]
    if missing:
        raise ConfigError(f"notebooks not executed yet in {executed_dir}: {missing}; run `xrg book run` first")
    if executed_dir.resolve() == EXECUTED_DIR.resolve():
        source = ROOT
    else:
        source = _stage_sources(executed_dir, build_dir.parent / "book-source")
    ensure_static_assets(source / "book" / "_static")
    command = [
        str(Path(sys.executable).parent / "jupyter-book"),
        "build",
        str(source),
        "--path-output",
        str(build_dir.parent),
    ]
    if strict:
        command += ["-W", "-n", "--keep-going"]
    print(">> " + " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return build_dir / "html"
