"""The paper's Tables 1 and 2 on the embedded dataset: ``xrg experiment table1|table2``.

Table 1 compares XRayGAN with GAN-INT-CLS, StackGAN and AttnGAN, each with the same
hierarchical report encoder; Table 2 removes one part of XRayGAN at a time (w/o VCN, w/o
MSCGAN, w/o HAE). Every row is trained on the same data, from the profile: the ``xraygan``
section with the ``experiment.xraygan`` overrides for the XRayGAN rows (so a profile can run
its comparison at a smaller size than its showcase run), and the ``baselines`` section with
the ``experiment.baselines`` overrides for the baselines. With ``experiment.match_budget``
(the default) every row gets the same number of generator updates at the final resolution
as the XRayGAN row (:class:`Budget`: its last stage's epochs and batch size; w/o MSCGAN's L2
pretraining at the final size counts, StackGAN's Stage I and XRayGAN's lower stages come on
top). The rows are trained with ``experiment.seeds`` training seeds (1 for the rows in
``experiment.single_seed_rows``), reported as mean ± sd with the per-seed values, and each
ordering "XRayGAN is better than row R" is tested over the seeds
(:func:`xrg.eval.seeds.ordering`); one that the seeds do not support is printed as "not
significant". Each table also carries the controls of :func:`xrg.eval.run.evaluate_controls`.
Runs go to ``OUT/<method>/``; a finished run is reused, a partial one resumed. The VCNs an
XRayGAN row needs depend only on the data and the ``vcn`` section, so they are trained once
in ``OUT/shared/`` and copied into each run.

The XRayGAN row is often the very run a profile's showcase already trained (the book's
``runs/<profile>/xraygan``, trained by its first chapters): when that run is finished, was
written with the row's run config (seed included) and records the same data build
(:func:`xrg.train.runs.reusable_run`), it is copied in instead of being trained again, with
its VCNs (which also seed ``OUT/shared/``) and its evaluation; ``OUT/<method>/reused.json``
says where it came from, and the table says that it was reused. A different config, another
data build, an unfinished run or one that does not record its data is never reused. Each run is scored by :func:`xrg.eval.run.evaluate_run`
with the same evaluators (``OUT/evaluators/``) and the profile's ``eval`` section, and the
table is written as ``OUT/table1.md`` and ``OUT/table1.json`` with 95% CIs, next to the
paper's published Open-i numbers, which come from real X-rays and another protocol and are
shown for orientation only.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xrg.checkpoint import load_checkpoint
from xrg.config import merge_settings
from xrg.errors import ConfigError, XrgError
from xrg.eval.run import EVAL_NAME, EvalConfig, evaluate_controls, evaluate_run
from xrg.eval.seeds import aggregate_seeds, ordering
from xrg.io import atomic_write_json, atomic_write_text, read_json_mapping
from xrg.locks import directory_lock
from xrg.profiles import Profile, load_profile
from xrg.train.runs import DATA_RECORD_NAME, reusable_run
from xrg.train.vcn import VCN_DIR, VCNTrainConfig, ensure_vcns, load_vcn, vcn_path
from xrg.train.xraygan import CHECKPOINT_NAME, METRICS_NAME, XRayGANTrainConfig, XRayGANTrainer

BASELINES: tuple[str, ...] = ("gan_int_cls", "stackgan", "attngan")
ABLATIONS: dict[str, dict[str, Any]] = {
    "xraygan": {},
    "xraygan_no_vcn": {"vc_weight": 0.0},
    "xraygan_no_mscgan": {"model": {"generator_kind": "single_shot"}},
    "xraygan_no_hae": {"model": {"encoder_kind": "flat"}},
    # the objective that learns the findings (issue 15), chosen on the validation split of the
    # cpu profile among canonical/posed targets, rec_weight 10, TTUR, n_critic 3, noise 16 and
    # w/o VCN (book/results.md): the L2 against the case's findings in the average patient in a
    # fixed pose, the posed renders still the critics' real images; everything else the paper's
    "xraygan_improved": {"rec_target": "canonical"},
}
#: Rows that need canonical-pose targets in the data (`xrg data build --canonical-targets`);
#: a table over data without them (an imported archive) leaves them out and says so.
NEEDS_CANONICAL: tuple[str, ...] = ("xraygan_improved",)
TABLES: dict[str, tuple[str, ...]] = {
    "table1": ("gan_int_cls", "stackgan", "attngan", "xraygan", "xraygan_improved"),
    "table2": ("xraygan_no_vcn", "xraygan_no_mscgan", "xraygan_no_hae", "xraygan", "xraygan_improved"),
}
LABELS: dict[str, str] = {
    "gan_int_cls": "GAN-INT-CLS",
    "stackgan": "StackGAN",
    "attngan": "AttnGAN",
    "xraygan": "XRayGAN",
    "xraygan_no_vcn": "w/o VCN",
    "xraygan_no_mscgan": "w/o MSCGAN",
    "xraygan_no_hae": "w/o HAE",
    "xraygan_improved": "XRayGAN, canonical L2 target",
}
#: Yang et al., Tables 1 and 2, Open-i columns: real X-rays, their own protocol (IS/FID on a
#: DenseNet-121, VC from a VCN trained on MIMIC-CXR). Not comparable number for number.
PUBLISHED: dict[str, dict[str, float]] = {
    "real": {"vc": 0.669},
    "gan_int_cls": {"is": 1.015, "fid": 272.7, "ssim": 0.201, "vc": 0.525},
    "stackgan": {"is": 1.043, "fid": 243.4, "ssim": 0.138, "vc": 0.487},
    "attngan": {"is": 1.055, "fid": 226.6, "ssim": 0.171, "vc": 0.508},
    "xraygan": {"is": 1.081, "fid": 141.5, "ssim": 0.343, "vc": 0.627},
    "xraygan_no_vcn": {"is": 1.079, "fid": 147.4, "ssim": 0.353, "vc": 0.623},
    "xraygan_no_mscgan": {"is": 1.022, "fid": 235.5, "ssim": 0.164, "vc": 0.605},
    "xraygan_no_hae": {"is": 1.079, "fid": 153.2, "ssim": 0.300, "vc": 0.621},
}


def _experiment_setting(profile: Profile, name: str, default: Any) -> Any:
    return profile.section("experiment").get(name, default)


def _unmatched_xraygan_config(profile: Profile, method: str) -> XRayGANTrainConfig:
    if method not in ABLATIONS:
        raise ConfigError(f"unknown XRayGAN table row {method!r}; expected one of {tuple(ABLATIONS)}")
    experiment = profile.section("experiment").get("xraygan") or {}
    if not isinstance(experiment, dict):
        raise ConfigError(
            f"profile {profile.name!r}: experiment.xraygan must be a mapping of settings, got {experiment!r}"
        )
    overrides = merge_settings(experiment, ABLATIONS[method])
    return XRayGANTrainConfig.from_profile(profile, overrides)


@dataclass(frozen=True)
class Budget:
    """What every row of a comparison gets at the final resolution: epochs of updates at one batch size.

    Set by the XRayGAN row (its last stage's adversarial epochs and batch size): the other
    rows are given the same number of generator updates on final-resolution images, so a row
    is not ahead because it saw the final size more often (:func:`final_resolution_epochs`).
    Lower-resolution stages (XRayGAN's, StackGAN's Stage I) come on top, as each method has them.
    """

    image_size: int
    epochs: int
    batch_size: int


def table_budget(profile: Profile) -> Budget:
    """The final-resolution budget of the profile's comparison (from its XRayGAN row)."""
    config = _unmatched_xraygan_config(profile, "xraygan")
    return Budget(config.final_size, int(config.num_epochs[-1]), int(config.batch_size[-1]))


def final_resolution_epochs(method: str, config: Any) -> tuple[int, int]:
    """``(epochs, batch size)`` of generator updates at the final resolution of a row's run config."""
    if method in BASELINES:
        from xrg.train.baselines import training_phases as baseline_phases

        final = config.model.image_size
        return sum(p.num_epochs for p in baseline_phases(config) if p.image_size == final), int(config.batch_size)
    from xrg.train.xraygan import training_phases

    final = config.final_size
    return sum(p.num_epochs for p in training_phases(config) if p.image_size == final), int(config.batch_size[-1])


def _matched(method: str, config: Any, budget: Budget) -> Any:
    """``config`` changed to spend ``budget`` at the final resolution (refused when it cannot)."""
    if method in BASELINES:
        if config.model.image_size != budget.image_size:
            raise ConfigError(
                f"{method}'s image_size {config.model.image_size} differs from the XRayGAN rows' final size "
                f"{budget.image_size}: a comparison needs one final resolution (set baselines.model.image_size)"
            )
        from xrg.train.baselines import training_phases as baseline_phases

        for epochs in range(budget.epochs, 4 * budget.epochs + 2):  # StackGAN splits its epochs over two stages
            try:
                candidate = dataclasses.replace(config, num_epochs=epochs, batch_size=budget.batch_size)
            except ConfigError:  # e.g. StackGAN needs an epoch for each stage
                continue
            if final_resolution_epochs(method, candidate)[0] == budget.epochs and all(
                p.num_epochs > 0 for p in baseline_phases(candidate)
            ):
                return candidate
        raise ConfigError(f"no epoch count gives {method} {budget.epochs} final-resolution epochs")
    if config.model.generator_kind == "single_shot":  # w/o MSCGAN: every epoch, L2 pretraining too, is final
        pretrain = min(config.pretrain_epochs, budget.epochs - 1)
        epochs = (*config.num_epochs[:-1], budget.epochs - pretrain)
        return dataclasses.replace(config, pretrain_epochs=pretrain, num_epochs=epochs)
    return config


def xraygan_config(profile: Profile, method: str) -> XRayGANTrainConfig:
    """The XRayGAN (or ablation) config of a table row, budget-matched unless ``experiment.match_budget`` is off."""
    config = _unmatched_xraygan_config(profile, method)
    if _experiment_setting(profile, "match_budget", True):
        config = _matched(method, config, table_budget(profile))
    return config


def baseline_config(profile: Profile, method: str) -> Any:
    """A baseline row's config, budget-matched to the XRayGAN rows unless ``experiment.match_budget`` is off."""
    from xrg.train.baselines import BaselineTrainConfig

    if method not in BASELINES:
        raise ConfigError(f"unknown baseline {method!r}; expected one of {BASELINES}")
    config = BaselineTrainConfig.from_profile(profile, method, profile.section("experiment").get("baselines", {}))
    if _experiment_setting(profile, "match_budget", True):
        config = _matched(method, config, table_budget(profile))
    return config


def row_seeds(profile: Profile, method: str) -> int:
    """How many training seeds a row gets: ``experiment.seeds``, 1 for ``experiment.single_seed_rows``."""
    seeds = _experiment_setting(profile, "seeds", 1)
    single = _experiment_setting(profile, "single_seed_rows", [])
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"profile {profile.name!r}: experiment.seeds must be a positive integer, got {seeds!r}")
    if not isinstance(single, list) or any(m not in LABELS for m in single):
        raise ConfigError(
            f"profile {profile.name!r}: experiment.single_seed_rows must list table rows of {tuple(LABELS)}, "
            f"got {single!r}"
        )
    return 1 if method in single else seeds


#: Written into a row's run directory when a finished run was copied in instead of trained.
REUSED_NAME = "reused.json"


def _copy_file(source: Path, target: Path) -> None:
    """Copy under a temporary name, then move into place: a killed copy leaves no half file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.copying")
    shutil.copy2(source, partial)
    partial.replace(target)


def copy_run(source: Path, target: Path, why: str) -> None:
    """Copy the finished run ``source`` into ``target``: its VCNs, metrics, data record and
    evaluation, ``reused.json``, then the checkpoint last (what marks the copy complete)."""
    with directory_lock(target, "run directory"):
        vcn_dir = source / VCN_DIR
        for path in sorted(vcn_dir.iterdir()) if vcn_dir.is_dir() else []:
            if path.is_file() and not path.name.startswith(".") and ".partial" not in path.name:
                _copy_file(path, target / VCN_DIR / path.name)
        for name in (METRICS_NAME, DATA_RECORD_NAME, EVAL_NAME):
            if (source / name).is_file():
                _copy_file(source / name, target / name)
        atomic_write_json(target / REUSED_NAME, {"source": str(source.resolve()), "why": why})
        _copy_file(source / CHECKPOINT_NAME, target / CHECKPOINT_NAME)


def reused_from(run_dir: Path) -> str | None:
    """The run ``run_dir`` was copied from (:func:`copy_run`), or None when it was trained here."""
    path = run_dir / REUSED_NAME
    if not path.is_file():
        return None
    try:
        return str(read_json_mapping(path, "reuse record", "delete it").get("source")) or None
    except XrgError:
        return None


def _run_finished(run_dir: Path, kind: str, config: Any) -> bool:
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        return False
    payload = load_checkpoint(path, kind, config=config)
    return bool(payload.get("progress", {}).get("finished"))


def training_seconds(run_dir: Path) -> float:
    """Seconds of training steps recorded in ``RUN/metrics.jsonl`` (VCN training excluded)."""
    path = run_dir / METRICS_NAME
    if not path.is_file():
        return 0.0
    total = 0.0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a killed process; the trainer drops it on resume
            continue
        if isinstance(row, dict) and row.get("kind") in ("xraygan", "baseline") and row.get("seconds"):
            total += float(row["seconds"])
    return total


@dataclass
class Experiment:
    """The runs of one profile's comparison in ``out_dir``."""

    profile: Profile
    data_dir: Path
    out_dir: Path
    device: torch.device = torch.device("cpu")
    progress: bool = True
    #: Finished XRayGAN runs an XRayGAN row may reuse (:func:`xrg.train.runs.reusable_run`);
    #: None: the profile's showcase run beside ``out_dir`` (``runs/<profile>/xraygan``, the book's layout).
    reuse_runs: tuple[Path, ...] | None = None

    @classmethod
    def create(
        cls,
        profile: str | Profile,
        data_dir: str | Path,
        out_dir: str | Path,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> Experiment:
        loaded = profile if isinstance(profile, Profile) else load_profile(profile)
        return cls(loaded, Path(data_dir), Path(out_dir), torch.device(device), progress)

    def run_dir(self, method: str, seed_index: int = 0) -> Path:
        """``OUT/<method>`` for a row's first seed, ``OUT/<method>-seed<k>`` for its further seeds."""
        return self.out_dir / (method if seed_index == 0 else f"{method}-seed{seed_index}")

    def row_config(self, method: str, seed_index: int = 0) -> Any:
        """The run config of a row's ``seed_index``-th training seed (the profile's seed plus the index)."""
        config = baseline_config(self.profile, method) if method in BASELINES else xraygan_config(self.profile, method)
        return config if seed_index == 0 else dataclasses.replace(config, seed=config.seed + seed_index)

    def reuse_candidates(self) -> list[Path]:
        if self.reuse_runs is not None:
            return [Path(p) for p in self.reuse_runs]
        return [self.out_dir.parent / "xraygan"]

    def reusable_source(self, config: XRayGANTrainConfig) -> tuple[Path, str] | None:
        """The first candidate run that can stand in for a row with ``config``, and why; None if none."""
        for candidate in self.reuse_candidates():
            if candidate.resolve() == self.out_dir.resolve() or not candidate.is_dir():
                continue
            ok, why = reusable_run(candidate, "xraygan", config, self.data_dir)
            if ok:
                return candidate, why
        return None

    def ensure_run(self, method: str, seed_index: int = 0) -> Path:
        """The finished run of ``method`` with its ``seed_index``-th seed: reused, resumed or trained."""
        run_dir = self.run_dir(method, seed_index)
        config = self.row_config(method, seed_index)
        if method in BASELINES:
            from xrg.train.baselines import BaselineTrainer

            if not _run_finished(run_dir, "baseline", config):
                resume = (run_dir / CHECKPOINT_NAME).is_file()
                BaselineTrainer(
                    config, self.data_dir, run_dir, device=self.device, resume=resume, progress=self.progress
                ).train()
            return run_dir
        if _run_finished(run_dir, "xraygan", config):
            return run_dir
        if not (run_dir / CHECKPOINT_NAME).is_file():  # a partial run of this row is resumed, never replaced
            found = self.reusable_source(config)
            if found is not None:
                copy_run(found[0], run_dir, found[1])
                return run_dir
        vcn_config = VCNTrainConfig.from_profile(self.profile, image_size=config.model.base_size)
        if config.vc_weight > 0:
            self._share_vcns(config, vcn_config, run_dir)
        resume = (run_dir / CHECKPOINT_NAME).is_file()
        XRayGANTrainer(
            config, self.data_dir, run_dir, vcn_config, device=self.device, resume=resume, progress=self.progress
        ).train()
        return run_dir

    def _share_vcns(self, config: XRayGANTrainConfig, vcn_config: VCNTrainConfig, run_dir: Path) -> None:
        from xrg.data.datasets import XRayPairDataset

        vocabulary = XRayPairDataset(self.data_dir, "train").vocab
        configs = [dataclasses.replace(vcn_config, image_size=size) for size in config.vcn_sizes]
        shared = self.out_dir / "shared"
        self._seed_shared_vcns(configs, vocabulary, shared)
        ensure_vcns(shared, self.data_dir, configs, vocabulary, self.device, self.progress)
        for size in config.vcn_sizes:
            target = vcn_path(run_dir, size)
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(vcn_path(shared, size), target)

    def _seed_shared_vcns(self, configs: list[VCNTrainConfig], vocabulary: Any, shared: Path) -> None:
        """Copy into ``shared`` the VCNs a reusable candidate run trained with the same config and data."""
        missing = [c for c in configs if not vcn_path(shared, c.image_size).is_file()]
        if not missing:
            return
        for candidate in self.reuse_candidates():
            if not candidate.is_dir() or candidate.resolve() == self.out_dir.resolve():
                continue
            ok, _ = reusable_run(candidate, "xraygan", None, self.data_dir)
            if not ok:
                continue
            for config in list(missing):
                source = vcn_path(candidate, config.image_size)
                if not source.is_file():
                    continue
                try:
                    load_vcn(source, config, vocabulary)  # same VCN config (seed included) and words
                except XrgError:
                    continue
                with directory_lock(shared, "run directory"):
                    _copy_file(source, vcn_path(shared, config.image_size))
                missing.remove(config)

    def evaluators(self) -> Any:
        from xrg.eval.evaluators import EvaluatorConfig
        from xrg.train.evaluators import ensure_evaluators

        config = EvaluatorConfig.from_profile(self.profile)
        return ensure_evaluators(config, self.data_dir, self.out_dir / "evaluators", self.device, self.progress)

    def table_methods(self, table: str) -> tuple[tuple[str, ...], dict[str, str]]:
        """The rows of ``table`` this data can train, and ``{row: why}`` for those it cannot."""
        if table not in TABLES:
            raise ConfigError(f"unknown table {table!r}; expected one of {tuple(TABLES)}")
        from xrg.data.manifest import read_manifest

        train = [c for c in read_manifest(self.data_dir) if c.split == "train"]
        left_out = {}
        if not train or not all(c.canonical for c in train):
            for method in NEEDS_CANONICAL:
                left_out[method] = (
                    f"{self.data_dir} has no canonical-pose targets (an imported archive, or a build without "
                    "`xrg data build --canonical-targets`)"
                )
        return tuple(m for m in TABLES[table] if m not in left_out), left_out

    def run_table(self, table: str, inception_weights: str | Path | None = None) -> dict[str, Any]:
        """Train what is missing, score every row, write ``OUT/<table>.md`` and ``.json``."""
        if table not in TABLES:
            raise ConfigError(f"unknown table {table!r}; expected one of {tuple(TABLES)}")
        started = time.perf_counter()
        methods, left_out = self.table_methods(table)
        evaluators = self.evaluators()
        eval_config = EvalConfig.from_profile(self.profile)
        rows: dict[str, dict[str, Any]] = {}
        for method in methods:
            seeds = []
            for seed_index in range(row_seeds(self.profile, method)):
                method_started = time.perf_counter()
                run_dir = self.ensure_run(method, seed_index)
                trained = time.perf_counter() - method_started
                result = evaluate_run(
                    run_dir, self.data_dir, evaluators, eval_config, self.device, inception_weights, self.progress
                )
                seeds.append({
                    "seed": self.row_config(method, seed_index).seed, "run_dir": str(run_dir),
                    "reused_from": reused_from(run_dir), "training_seconds": training_seconds(run_dir),
                    "wall_seconds": trained, "eval": result,
                })  # fmt: skip
            rows[method] = {
                "run_dir": seeds[0]["run_dir"],
                "reused_from": seeds[0]["reused_from"],
                "training_seconds": sum(seed["training_seconds"] for seed in seeds),
                "wall_seconds": sum(seed["wall_seconds"] for seed in seeds),
                "final_resolution": dict(zip(("epochs", "batch_size"),
                                             final_resolution_epochs(method, self.row_config(method)))),
                "seeds": [{k: v for k, v in seed.items() if k != "eval"} for seed in seeds],
                "per_seed": [table_row(seed["eval"]) for seed in seeds],
                "eval": seeds[0]["eval"],
            }  # fmt: skip
        # the controls, read like the table's first row (every row has the same size and vocabulary)
        from xrg.eval.generators import load_generator

        like = load_generator(self.run_dir(methods[0]), self.device)
        controls = evaluate_controls(
            like, self.data_dir, evaluators, eval_config, self.out_dir / "controls", progress=self.progress
        )
        aggregated = {method: seed_row(row["per_seed"]) for method, row in rows.items()}
        summary = {
            "table": table,
            "profile": self.profile.name,
            "data_dir": str(self.data_dir),
            "rows": aggregated,
            "orderings": table_orderings(table, aggregated),
            "controls": {name: table_row(result) for name, result in controls.items()},
            "real": real_row(next(iter(rows.values()))["eval"]),
            "published": {m: PUBLISHED.get(m, {}) for m in ("real", *methods)},
            "left_out": left_out,
            "runs": {m: {k: v for k, v in row.items() if k not in ("eval", "per_seed")} for m, row in rows.items()},
            "evaluators": next(iter(rows.values()))["eval"]["evaluators"],
            "wall_seconds": time.perf_counter() - started,
        }
        atomic_write_json(self.out_dir / f"{table}.json", summary)
        atomic_write_text(self.out_dir / f"{table}.md", table_markdown(summary))
        return summary


def _estimate(entry: dict[str, Any]) -> dict[str, Any]:
    """The first ``{"value", "ci", "n"}`` estimate in a metric's dict."""
    if "value" in entry:
        return entry
    for value in entry.values():
        if isinstance(value, dict) and "value" in value:
            return value
    raise KeyError(f"no estimate in {sorted(entry)}")


def _entry(result: dict[str, Any], *path: str) -> dict[str, Any] | None:
    """The estimate at ``path`` of an ``eval.json`` (its first, for a group), None where it was not scored."""
    node: Any = result
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return _estimate(node) if isinstance(node, dict) else None


def table_row(result: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one ``eval.json``: KID first, the paper's columns, the new measures.

    ``is`` is kept as eval.json has it ("not applicable", with the reason); the tables do not show it.
    """
    row = {
        "kid": _entry(result, "kid"),
        "fid": _entry(result, "fid", "both"),
        "fid_floor": _entry(result, "fid_floor", "both"),
        "ssim": _entry(result, "ssim", "both"),
        "vc": _entry(result, "vc"),
        "is": _entry(result, "is"),
        "fidelity_frontal": _entry(result, "fidelity", "generated", "frontal", "macro"),
        "fidelity_lateral": _entry(result, "fidelity", "generated", "lateral", "macro"),
        "memorisation_ratio": _entry(result, "memorisation", "ratio"),
        "ms_ssim": _entry(result, "diversity", "frontal"),
        "controllability": _entry(result, "controllability"),
        "vc_auroc": _entry(result, "vc_auroc", "generated"),
        "detection_frontal": _entry(result, "detection", "generated", "frontal"),
    }
    return row


def real_row(result: dict[str, Any]) -> dict[str, Any]:
    """The real renders' row: VC and fidelity of real pairs, and the real-vs-real FID floor as its FID."""
    return {
        "fid": _entry(result, "fid_floor", "both"),
        "vc": _entry(result, "vc_real"),
        "fidelity_frontal": _entry(result, "fidelity", "real", "frontal", "macro"),
        "fidelity_lateral": _entry(result, "fidelity", "real", "lateral", "macro"),
    }


def seed_row(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """A row's table entries over its training seeds (:func:`xrg.eval.seeds.aggregate_seeds`)."""
    keys = dict.fromkeys(key for row in per_seed for key in row)
    return {key: aggregate_seeds([row.get(key) for row in per_seed]) for key in keys}


#: The row each table's claims are about: the paper says it beats every other row.
CLAIMED_BEST = "xraygan"


def table_orderings(table: str, rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For every other row and every column with a direction: do the seeds support "XRayGAN is better"?"""
    if CLAIMED_BEST not in rows:
        return {}
    result: dict[str, dict[str, Any]] = {}
    for method, row in rows.items():
        if method == CLAIMED_BEST:
            continue
        result[method] = {
            key: ordering(rows[CLAIMED_BEST].get(key), row.get(key), higher)
            for key, higher in BETTER.items()
            if higher is not None
        }
    return result


def _fmt(estimate: dict[str, Any] | None, digits: int = 3) -> str:
    if not estimate or estimate.get("value") is None:
        return "–"
    if (estimate.get("n_seeds") or 1) > 1:
        seeds = ", ".join(f"{v:.{digits}f}" for v in estimate["per_seed"])
        return f"{estimate['value']:.{digits}f} ± {estimate['sd']:.{digits}f} ({seeds})"
    low, high = estimate.get("ci", [None, None])
    text = f"{estimate['value']:.{digits}f}"
    if low is not None and high is not None:
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("kid", "KID ↓", 4),
    ("fid", "FID ↓", 2),
    ("ssim", "SSIM ↑", 3),
    ("vc", "VC ↑", 3),
    ("vc_auroc", "VC-AUROC ↑", 3),
    ("detection_frontal", "detection − false alarm (frontal) ↑", 3),
    ("controllability", "controllability (margin) ↑", 3),
    ("fidelity_frontal", "fidelity AUROC (frontal, ranking only) ↑", 3),
    ("ms_ssim", "MS-SSIM across seeds ↓", 3),
    ("memorisation_ratio", "NN-distance ratio", 3),
)
#: Which way is better in each column (None: neither; the memorisation ratio is read against 1).
BETTER: dict[str, bool | None] = {
    "kid": False, "fid": False, "ssim": True, "vc": True, "vc_auroc": True, "detection_frontal": True,
    "controllability": True, "fidelity_frontal": True, "ms_ssim": None, "memorisation_ratio": None,
}  # fmt: skip
CONTROL_LABELS: dict[str, str] = {
    "mean image": "Mean image (control)", "retrieval": "Retrieval (control)", "phantom": "Phantom = real renders (control)",
}  # fmt: skip


def mean_image_wins(row: dict[str, Any], mean: dict[str, Any]) -> list[str]:
    """The columns of ``row`` on which the report-blind mean image scores at least as well."""
    wins = []
    for key, title, _ in COLUMNS:
        higher = BETTER.get(key)
        ours, theirs = (row.get(key) or {}).get("value"), (mean.get(key) or {}).get("value")
        if higher is None or ours is None or theirs is None:
            continue
        if (theirs >= ours) if higher else (theirs <= ours):
            wins.append(title.rstrip(" ↑↓"))
    return wins


def ordering_lines(summary: dict[str, Any]) -> list[str]:
    """What the seeds say of the table's claim "XRayGAN is better than each other row", column by column."""
    orderings = summary.get("orderings") or {}
    if not orderings:
        return []
    seeds = {m: (r.get("kid") or r.get("ssim") or {}).get("n_seeds") for m, r in summary["rows"].items()}
    lines = ["", f"Orderings over training seeds (XRayGAN {seeds.get(CLAIMED_BEST) or 1} seed(s); exact one-sided "
             "permutation test at 0.05; \"not significant\" orderings are not findings):"]  # fmt: skip
    titles = {key: title for key, title, _ in COLUMNS}
    for method, columns in orderings.items():
        parts = []
        for key, verdict in columns.items():
            if verdict["verdict"] == "not scored":
                continue
            p_value = "" if verdict["p"] is None else f" (p = {verdict['p']:.2f})"
            parts.append(f"{titles[key].rstrip(' ↑↓')}: {verdict['verdict']}{p_value}")
        if parts:
            lines.append(
                f"- XRayGAN better than {LABELS[method]} ({seeds.get(method) or 1} seed(s)): " + "; ".join(parts)
            )
    return lines


def table_markdown(summary: dict[str, Any]) -> str:
    """The table: KID, then the paper's FID, SSIM and VC (not IS), the new columns, with 95% intervals."""
    header = "| method | " + " | ".join(title for _, title, _ in COLUMNS) + " | paper (Open-i): IS / FID / SSIM / VC |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    real = summary["real"]
    cells = [_fmt(real.get(key), digits) if key in real else "–" for key, _, digits in COLUMNS]
    lines.append("| Real | " + " | ".join(cells) + f" | – / – / – / {PUBLISHED['real']['vc']} |")
    for method, row in summary["rows"].items():
        paper = PUBLISHED.get(method, {})
        published = " / ".join(str(paper.get(k, "–")) for k in ("is", "fid", "ssim", "vc"))
        cells = [_fmt(row.get(key), digits) for key, _, digits in COLUMNS]
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + f" | {published} |")
    controls = summary.get("controls", {})
    for name, row in controls.items():
        cells = [_fmt(row.get(key), digits) for key, _, digits in COLUMNS]
        lines.append(f"| {CONTROL_LABELS.get(name, name)} | " + " | ".join(cells) + " | – |")
    reused = {m: r["reused_from"] for m, r in summary.get("runs", {}).items() if r.get("reused_from")}
    lines += [""]
    if "mean image" in controls:
        for method, row in summary["rows"].items():
            wins = mean_image_wins(row, controls["mean image"])
            if wins:
                lines.append(
                    f"{LABELS[method]}: the mean image (one image for every report) scores at least as well on "
                    f"{', '.join(wins)}: these numbers are not evidence that {LABELS[method]} draws the report."
                )
    lines += [
        f"{LABELS[method]}: not trained again; the finished run `{source}` was reused (same run config, seed "
        "and data build)."
        for method, source in reused.items()
    ]
    lines += [f"{LABELS[method]}: left out: {why}." for method, why in summary.get("left_out", {}).items()]
    lines += ordering_lines(summary)
    lines += [
        "",
        f"Profile `{summary['profile']}`, test split of `{summary['data_dir']}`; 95% intervals in brackets: KID's "
        "from its subset standard error, FID's from half-sampling without replacement (an interval for the "
        "large-sample FID, so it can lie below the small-sample value), the others bootstrap percentiles. "
        "FID and KID use the evaluation DenseNet-121's pooled features; VC uses the evaluation VCN; both were "
        "trained on an independent phantom cohort. The Real row's FID is real test renders against as many real "
        "cohort renders: the floor a generator of real images would score. IS is not shown: the classifier is "
        "multi-label (sigmoid, no 'no finding' class), so a softmax over its logits is not a class distribution. "
        "The paper's numbers come from real Open-i X-rays and its own evaluators: a different dataset, for "
        "orientation only.",
    ]
    return "\n".join(lines) + "\n"
