"""The ``xrg`` command line.

    xrg data build --profile cpu --out data/cpu        # the embedded default dataset
    xrg data import-openi --reports R --images I --out D
    xrg data import-mimic --root MIMIC --out D
    xrg phantom --report "Small left pleural effusion." --seed 3 --out OUT
    xrg bench data                                      # renderer throughput
    xrg bench variety [--patients 16 --size 64]         # how different the normal patients are
    xrg train xraygan --profile cpu --data data/cpu --out runs/cpu [--resume]
    xrg train vcn --profile cpu --data data/cpu --out runs/cpu
    xrg train pggan --profile cpu --data data/cpu --out runs/cpu/pggan [--resume]
    xrg train pathology --backbone densenet|critic [--pggan runs/cpu/pggan] --profile cpu --data data/cpu --out runs/cpu/search
    xrg pggan sample --checkpoint runs/cpu/pggan --classifier runs/cpu/search/search_densenet.pt --class cardiomegaly --n 8 --out out/
    xrg train diffusevae --stage vae|moco|ddpm|finetune --profile cpu --data data/cpu --out runs/cpu/diffusevae
    xrg diffusevae sample --checkpoint runs/cpu/diffusevae --condition "pleural effusion; cardiomegaly" --n 8 --steps 50 --out out/
    xrg train baseline --method stackgan --profile cpu --data data/cpu --out runs/cpu/stackgan
    xrg eval --run runs/cpu/xraygan --data data/cpu --profile cpu   # KID, FID, SSIM, VC, detection ... → eval.json
    xrg experiment table1 --profile cpu --data data/cpu --out runs/cpu/experiments
    xrg generate --checkpoint runs/cpu --report "Mild cardiomegaly." --out out/
    xrg bench train --profile cpu [--family baselines|pggan|diffusevae]   # training images/s per stage
    xrg bench train --profile cpu --reference [--precision bfloat16 --channels-last]   # speed-up over plain float32
    xrg bench generate --profile cpu [--checkpoint runs/cpu]
    xrg bench diffusion --profile cpu [--checkpoint runs/cpu/diffusevae/findings] [--steps 5 10 25 50]
    xrg bench explorer --run-dir runs/cpu/xraygan [--data-dir data/cpu]   # report explorer response times
    xrg bench pggan-explorer --run-dir runs/cpu/pggan --classifier runs/cpu/search/search_densenet.pt
    xrg book run --profile cpu                          # data + notebooks (papermill)
    xrg book build                                      # Jupyter Book HTML

Every number option has a stated range (``--help`` shows it) and is checked before any
work starts, as are ``--device`` (CUDA must exist) and the writability and ownership of
``--out`` (a directory another command made, or of unknown content, is refused without
``--force``). Errors from bad input (:class:`xrg.errors.XrgError`, and any ``OSError`` or
``ValueError`` reaching the top level) are printed as one ``xrg: error:`` line and exit
with status 2, never as a traceback (``XRG_DEBUG=1`` shows it). A training stopped by
SIGINT/SIGTERM saves its state, prints the command that resumes it and exits with status
130. A second writer into a run or data directory that is in use is refused, naming the
holder's PID.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from xrg.errors import ConfigError, DiskFullError, TrainingStopped, XrgError

SEED_MAX = 2**32 - 1


def bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``low..high`` (the range is said in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in {low}..{high}, got {text[:40]!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value}")
        return value

    parse.__name__ = f"integer in {low}..{high}"
    return parse


def _number_in(low: float, high: float, closed: bool) -> Callable[[str], float]:
    """An argparse type: a number in the interval from ``low`` to ``high`` (ends included when ``closed``)."""
    shown = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g})"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {shown}, got {text[:40]!r}") from None
        if not (low <= value <= high if closed else low < value < high):
            raise argparse.ArgumentTypeError(f"must be in {shown}, got {text[:40]}")
        return value

    parse.__name__ = f"number in {shown}"
    return parse


def open_interval(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a finite number strictly between ``low`` and ``high`` (the range is said in the error)."""
    return _number_in(low, high, closed=False)


def closed_interval(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a finite number from ``low`` to ``high`` inclusive (the range is said in the error)."""
    return _number_in(low, high, closed=True)


def device_name(text: str) -> str:
    """An argparse type: ``cpu``, ``cuda`` or ``cuda:N``, refused at once when this machine has no such device."""
    if text == "cpu":
        return text
    match = re.fullmatch(r"cuda(?::(\d{1,3}))?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text[:40]!r}")
    import torch

    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: this machine has no usable CUDA device; use --device cpu")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def _claim(args: argparse.Namespace, kind: str, attribute: str = "out") -> Path:
    from xrg.paths import claim_output_dir

    return claim_output_dir(getattr(args, attribute), kind, force=getattr(args, "force", False), what=f"--{attribute}")


def _cmd_data_build(args: argparse.Namespace) -> None:
    from xrg.data.build import DataBuildConfig, build_dataset
    from xrg.profiles import load_profile

    profile = load_profile(args.profile)
    config = DataBuildConfig.from_profile(
        profile.data,
        seed=profile.seed if args.seed is None else args.seed,
        workers=args.workers,
        max_reports=args.max_reports,
        image_size=args.image_size,
        canonical_targets=True if args.canonical_targets else None,
    )
    out = Path(args.out or f"data/{profile.name}")
    print(f"building the {profile.name} dataset into {out}: {config}")
    summary = build_dataset(out, config, reports_source=args.reports, progress=not args.quiet, force=args.force)
    print(summary)


def _cmd_import_openi(args: argparse.Namespace) -> None:
    from xrg.data.importers import import_openi

    print(import_openi(args.reports, args.images, args.out, size=args.size, seed=args.seed, metadata_csv=args.metadata,
                       force=args.force))  # fmt: skip


def _cmd_import_mimic(args: argparse.Namespace) -> None:
    from xrg.data.importers import import_mimic

    print(
        import_mimic(args.root, args.out, size=args.size, seed=args.seed, subset=args.subset or None, force=args.force)
    )


def _cmd_phantom(args: argparse.Namespace) -> None:
    from xrg.data.phantom import render_report

    print(render_report(_report_text(args), seed=args.seed, size=args.size, out=args.out, force=args.force))


def _cmd_bench_data(args: argparse.Namespace) -> None:
    from xrg.bench import bench_data

    bench_data(sizes=tuple(args.sizes), n_pairs=args.pairs, workers=args.workers)


def _cmd_bench_variety(args: argparse.Namespace) -> None:
    from xrg.bench import bench_variety

    bench_variety(n_patients=args.patients, size=args.size, first_seed=args.first_seed)


#: Largest report text read from ``--report-file`` (Open-i reports are under 5 kB).
MAX_REPORT_FILE_BYTES = 1 << 20


def _report_text(args: argparse.Namespace) -> str:
    if args.report_file:
        path = Path(args.report_file)
        if not path.is_file():
            raise XrgError(f"report file {path} does not exist")
        if path.stat().st_size > MAX_REPORT_FILE_BYTES:
            raise XrgError(f"report file {path} is over {MAX_REPORT_FILE_BYTES} bytes; a report is a few kB of text")
        return path.read_text(encoding="utf-8", errors="replace")
    return args.report


def _resume_command(args: argparse.Namespace) -> str:
    """The command that continues this run: same profile, data, settings and device, shell-quoted."""
    words = ["xrg", "train", args.train_command]
    if args.train_command == "baseline":
        words += ["--method", args.method]
    if args.train_command == "diffusevae":
        words += ["--stage", args.stage]
        words += [
            word
            for option in ("moco", "ddpm")
            if getattr(args, option)
            for word in (f"--{option}", getattr(args, option))
        ]
    words += ["--profile", args.profile, "--data", args.data, "--out", args.out]
    words += [word for item in args.set or [] for word in ("--set", item)]
    words += [word for item in getattr(args, "vcn_set", None) or [] for word in ("--vcn-set", item)]
    if args.device != "cpu":
        words += ["--device", args.device]
    return shlex.join([*words, "--resume"])


def _train_to_the_end(trainer: Any, args: argparse.Namespace) -> int:
    """Run a trainer, saying how to resume when it stops early (exit 130 after SIGINT/SIGTERM)."""
    for note in trainer.notes:
        print(f"note: {note}")
    try:
        result = trainer.train(max_steps=args.max_steps)
    except DiskFullError:
        print(f"xrg: once there is space again, resume with: {_resume_command(args)}", file=sys.stderr)
        raise
    if result.finished:
        print(f"finished after {result.step} steps: {result.checkpoint}; metrics in {trainer.metrics_path}")
        return 0
    print(f"stopped ({result.stopped_by}) after step {result.step}; checkpoint saved to {result.checkpoint}")
    print(f"resume with: {_resume_command(args)}")
    return 130 if result.stopped_by in ("SIGINT", "SIGTERM") else 0


def _cmd_train_xraygan(args: argparse.Namespace) -> int:
    from xrg.config import parse_overrides
    from xrg.profiles import load_profile
    from xrg.train.vcn import VCNTrainConfig
    from xrg.train.xraygan import XRayGANTrainConfig, XRayGANTrainer

    profile = load_profile(args.profile)
    config = XRayGANTrainConfig.from_profile(profile, parse_overrides(args.set))
    vcn_config = VCNTrainConfig.from_profile(
        profile, image_size=config.model.base_size, overrides=parse_overrides(args.vcn_set)
    )
    with _run_directory(args):
        print(f"XRayGAN run {args.out} on {args.data}: {config}")
        trainer = XRayGANTrainer(
            config, args.data, args.out, vcn_config, device=args.device, resume=args.resume, progress=not args.quiet
        )
        for size, vcn in sorted(trainer.vcns.items()):
            print(f"VCN {size}px ({vcn.path}): test {vcn.metrics}")
        return _train_to_the_end(trainer, args)


def _run_directory(args: argparse.Namespace, attribute: str = "out"):
    """The run directory, checked writable, locked for this command and claimed (a run's, or new)."""
    from xrg.data.manifest import read_manifest
    from xrg.locks import own_output_dir
    from xrg.train.distributed import is_main

    if not is_main():  # under torchrun rank 0 checks, locks and claims the directory; the others train
        return contextlib.nullcontext(Path(getattr(args, attribute)))
    if getattr(args, "data", None):
        read_manifest(args.data)  # a bad --data fails before --out is touched
    return own_output_dir(getattr(args, attribute), "run", force=args.force, what=f"--{attribute}")


def _cmd_train_pggan(args: argparse.Namespace) -> int:
    from xrg.config import parse_overrides
    from xrg.profiles import load_profile
    from xrg.train.pggan import PGGANTrainConfig, PGGANTrainer

    config = PGGANTrainConfig.from_profile(load_profile(args.profile), parse_overrides(args.set))
    with _run_directory(args):
        print(f"PGGAN run {args.out} on {args.data}: {config}")
        trainer = PGGANTrainer(
            config, args.data, args.out, device=args.device, resume=args.resume, progress=not args.quiet
        )
        return _train_to_the_end(trainer, args)


def _cmd_train_diffusevae(args: argparse.Namespace) -> int:
    from xrg.config import parse_overrides
    from xrg.profiles import load_profile
    from xrg.train.diffusevae import DiffuseVAETrainConfig, DiffuseVAETrainer

    config = DiffuseVAETrainConfig.from_profile(load_profile(args.profile), parse_overrides(args.set))
    if args.moco and args.stage != "finetune":
        raise XrgError(
            "--moco names the representation model of the finetune stage; leave it out of --stage " + args.stage
        )
    with _run_directory(args):
        print(f"DiffuseVAE {args.stage} stage in {Path(args.out) / args.stage} on {args.data}")
        trainer = DiffuseVAETrainer(
            config, args.stage, args.data, args.out, device=args.device, resume=args.resume,
            progress=not args.quiet, moco_run=args.moco, ddpm_run=args.ddpm,
        )  # fmt: skip
        return _train_to_the_end(trainer, args)


def _cmd_diffusevae_sample(args: argparse.Namespace) -> None:
    import json

    import torch

    from xrg.data.images import save_png
    from xrg.pipelines import DiffuseVAEPipeline, prompt_findings

    pipe = DiffuseVAEPipeline.from_checkpoint(args.checkpoint, device=args.device)
    prompt = args.condition if args.condition is not None else _report_text(args)
    if args.steps is not None and args.steps > pipe.model.schedule.timesteps:
        raise XrgError(f"--steps {args.steps} is more than the model's {pipe.model.schedule.timesteps} timesteps")
    prompt_findings(prompt, report=args.condition is None)  # a bad condition or report is refused before writing
    out = _claim(args, "generated")
    from tqdm.auto import tqdm

    steps = args.steps or pipe.model.schedule.timesteps
    with tqdm(total=steps, desc="sampling", unit="step", disable=args.quiet) as bar:
        outputs = pipe(
            prompt, args.n, report=args.condition is None, generator=torch.Generator().manual_seed(args.seed),
            steps=args.steps, guidance=args.guidance, eta=args.eta, progress=bar,
        )  # fmt: skip
    records = []
    for i, output in enumerate(outputs):
        image = save_png(out / f"sample_{i:03d}.png", output.image[0].numpy())
        vae = save_png(out / f"vae_{i:03d}.png", output.vae[0].numpy())
        records.append({"image": image.name, "vae": vae.name})
    manifest = {
        "checkpoint": str(pipe.model.checkpoint_info.path), "prompt": prompt, "report": args.condition is None,
        "findings": list(outputs[0].findings), "view": pipe.model.view, "n": args.n, "seed": args.seed,
        "steps": args.steps, "sampler": "ancestral" if args.steps is None else "ddim", "eta": args.eta,
        "guidance": args.guidance, "samples": records,
    }  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(records)} samples of {', '.join(outputs[0].findings) or 'a normal chest'} to {out}")


def _cmd_train_pathology(args: argparse.Namespace) -> None:
    from xrg.config import parse_overrides
    from xrg.profiles import load_profile
    from xrg.train.pathology import PathologyTrainConfig, train_pathology_classifier

    config = PathologyTrainConfig.from_profile(load_profile(args.profile), args.backbone, parse_overrides(args.set))
    pggan = None
    if args.backbone == "critic":
        from xrg.eval.generators import checkpoint_path

        if not args.pggan:
            raise XrgError("--backbone critic starts from a trained PGGAN's critic: give its run with --pggan RUN")
        pggan = checkpoint_path(args.pggan)
    with _run_directory(args):
        print(f"search classifier ({args.backbone}) in {args.out} on {args.data}: {config}")
        _, metrics, path = train_pathology_classifier(
            args.data, config, args.out, pggan_checkpoint=pggan, device=args.device, progress=not args.quiet
        )
    print(f"wrote {path}; validation macro AUROC {metrics['val_auroc']['macro']}")
    for name, threshold in metrics["thresholds"].items():
        auroc = metrics["val_auroc"].get(name)
        shown = "no threshold (no validation positives)" if threshold is None else f"threshold p >= {threshold:.3f}"
        print(f"{name:>22}: {shown}, validation AUROC {auroc if auroc is None else round(auroc, 3)}")


def _cmd_pggan_sample(args: argparse.Namespace) -> None:
    from xrg.eval.generators import checkpoint_path
    from xrg.latent.sample import MANIFEST_NAME, confirming_classifier, sample_pathology, summary
    from xrg.models.pggan import PGGAN
    from xrg.train.pathology import load_search_classifier

    model = PGGAN.from_checkpoint(checkpoint_path(args.checkpoint), map_location=args.device)
    classifier = load_search_classifier(args.classifier, map_location=args.device)
    classifier.class_index(args.class_name)  # an unknown class is refused before anything is written
    evaluator = confirming_classifier(args.evaluators) if args.evaluators else None
    target = args.severity
    out = _claim(args, "generated")
    records = sample_pathology(
        model, classifier, args.class_name, out, n=args.n, seed=args.seed, target=target, evaluator=evaluator,
        max_steps=args.max_steps, lr=args.lr, regulariser=args.regulariser,
    )  # fmt: skip
    figures = summary(records, evaluated=evaluator is not None)
    print(f"wrote {sum(r.success for r in records)} images and {out / MANIFEST_NAME}: {figures}")


def _cmd_train_baseline(args: argparse.Namespace) -> int:
    from xrg.config import parse_overrides
    from xrg.profiles import load_profile
    from xrg.train.baselines import BaselineTrainConfig, BaselineTrainer

    config = BaselineTrainConfig.from_profile(load_profile(args.profile), args.method, parse_overrides(args.set))
    with _run_directory(args):
        print(f"{args.method} run {args.out} on {args.data}: {config}")
        trainer = BaselineTrainer(
            config, args.data, args.out, device=args.device, resume=args.resume, progress=not args.quiet
        )
        return _train_to_the_end(trainer, args)


def _cmd_train_vcn(args: argparse.Namespace) -> None:
    from xrg.config import parse_overrides
    from xrg.data.datasets import XRayPairDataset
    from xrg.profiles import load_profile
    from xrg.train.vcn import VCNTrainConfig, ensure_vcns
    from xrg.train.xraygan import XRayGANTrainConfig

    profile = load_profile(args.profile)
    sizes = args.sizes or XRayGANTrainConfig.from_profile(profile).vcn_sizes
    if not sizes:
        raise XrgError(f"profile {profile.name!r} trains XRayGAN without a VCN (vc_weight 0); pass --sizes")
    overrides = parse_overrides(args.set)
    configs = [VCNTrainConfig.from_profile(profile, image_size=size, overrides=overrides) for size in sizes]
    vocabulary = XRayPairDataset(args.data, "train").vocab
    with _run_directory(args):
        vcns = ensure_vcns(args.out, args.data, configs, vocabulary, args.device, progress=not args.quiet)
    for size, vcn in vcns.items():
        print(f"VCN {size}px ({vcn.path}): test {vcn.metrics}")


def _cmd_generate(args: argparse.Namespace) -> None:
    import torch

    from xrg.pipelines import XRayGANPipeline, save_pair

    text = _report_text(args)
    pipe = XRayGANPipeline.from_checkpoint(args.checkpoint, device=args.device)
    out = _claim(args, "generated")  # after the checkpoint is known good: a refused one leaves nothing behind
    generator = torch.Generator().manual_seed(args.seed)
    output = pipe(text, generator=generator)
    paths = save_pair(output, out)
    print(f"wrote {paths['frontal']} and {paths['lateral']} ({pipe.image_size}px) with {pipe}")
    if output.unknown_words:
        print(
            f"{output.num_unknown_words} words not in the vocabulary (read as <unk>): {', '.join(output.unknown_words)}"
        )
    for note in output.warnings:
        print(f"warning: {note}")


def _cmd_bench_train(args: argparse.Namespace) -> None:
    from xrg.train.benchmarks import (
        bench_speedup,
        bench_train,
        bench_train_baselines,
        bench_train_diffusevae,
        bench_train_pggan,
    )

    if args.family != "xraygan":
        if args.reference or args.precision or args.channels_last:
            raise ConfigError(
                f"--reference, --precision and --channels-last time XRayGAN steps; drop --family {args.family}"
            )
        bench = {"pggan": bench_train_pggan, "diffusevae": bench_train_diffusevae, "baselines": bench_train_baselines}[
            args.family
        ]
        bench(args.profile, steps=args.steps, device=args.device, train_cases=args.train_cases, jsonl=args.jsonl)
        return
    arithmetic = dict(precision=args.precision, channels_last=True if args.channels_last else None)
    if args.reference:
        bench_speedup(args.profile, steps=args.steps, device=args.device, jsonl=args.jsonl, **arithmetic)
        return
    bench_train(args.profile, steps=args.steps, device=args.device, train_cases=args.train_cases, jsonl=args.jsonl,
                **arithmetic)  # fmt: skip


def _cmd_bench_generate(args: argparse.Namespace) -> None:
    from xrg.train.benchmarks import bench_generate

    bench_generate(args.profile, checkpoint=args.checkpoint, n=args.n)


def _cmd_bench_diffusion(args: argparse.Namespace) -> None:
    from xrg.bench import bench_diffusion

    bench_diffusion(args.profile, checkpoint=args.checkpoint, step_counts=args.steps, images=args.images,
                    repeats=args.repeats, ancestral=not args.no_ancestral, device=args.device)  # fmt: skip


def _cmd_bench_pggan_explorer(args: argparse.Namespace) -> None:
    from xrg.bench import bench_pggan_explorer

    bench_pggan_explorer(args.run_dir, args.classifier, evaluators=args.evaluators, class_name=args.class_name,
                         repeats=args.repeats, seed=args.seed, search_steps=args.max_steps)  # fmt: skip


def _cmd_bench_explorer(args: argparse.Namespace) -> None:
    from xrg.bench import bench_explorer

    bench_explorer(args.run_dir, data_dir=args.data_dir, n=args.n, seed=args.seed)


def _cmd_eval(args: argparse.Namespace) -> None:
    from xrg.data.manifest import read_manifest
    from xrg.eval.evaluators import EvaluatorConfig
    from xrg.eval.generators import checkpoint_path
    from xrg.eval.run import EvalConfig, eval_name, evaluate_run
    from xrg.experiments import table_row
    from xrg.locks import own_output_dir
    from xrg.profiles import load_profile
    from xrg.train.evaluators import ensure_evaluators

    profile = load_profile(args.profile)
    checkpoint_path(args.run)  # inputs first: a missing run or data directory fails before any training
    read_manifest(args.data)
    evaluators_dir = (
        Path(args.evaluators) if args.evaluators else Path("runs") / profile.name / "experiments" / "evaluators"
    )
    with own_output_dir(
        evaluators_dir, "evaluators", force=args.force_evaluators, what="--evaluators"
    ) as evaluators_dir:
        evaluators = ensure_evaluators(EvaluatorConfig.from_profile(profile), args.data, evaluators_dir, args.device)
    config = EvalConfig.from_profile(profile, {"split": args.split})
    result = evaluate_run(args.run, args.data, evaluators, config, args.device,
                          args.inception_weights, force=args.force)  # fmt: skip
    for key, value in table_row(result).items():
        print(f"{key:>20}: {value}")
    print(f"wrote {checkpoint_path(args.run).parent / eval_name(config.split)}")


def _cmd_experiment(args: argparse.Namespace) -> None:
    from xrg.experiments import Experiment

    with _run_directory(args):
        experiment = Experiment.create(args.profile, args.data, args.out, args.device)
        summary = experiment.run_table(args.table, args.inception_weights)
    print((Path(args.out) / f"{args.table}.md").read_text(encoding="utf-8"))
    print(f"{args.table}: {summary['wall_seconds'] / 60:.1f} min; wrote {Path(args.out) / args.table}.md and .json")


def _cmd_book_run(args: argparse.Namespace) -> None:
    from xrg.book import format_timings, run_book

    timings = run_book(args.profile, params_file=args.params, only=args.only, force=args.force)
    print(">> seconds per step (0: up to date)\n" + format_timings(timings), flush=True)


def _cmd_book_build(args: argparse.Namespace) -> None:
    from xrg.book import build_html

    build_html(strict=not args.no_strict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xrg", description="Chest X-ray generation from radiology reports.")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="build or import datasets").add_subparsers(
        dest="data_command", required=True
    )
    build = data.add_parser("build", help="render the Open-i reports through the CT phantom")
    build.add_argument("--profile", default="cpu", help="tiny | cpu | paper | path to a profile YAML (default cpu)")
    build.add_argument("--out", help="output directory (default data/<profile>)")
    build.add_argument("--reports", help="Open-i reports (directory or .tgz); default: the copy inside torchxrayvision")
    build.add_argument("--workers", type=bounded(1, 64), help="rendering processes, 1..64 (default from the profile)")
    build.add_argument(
        "--max-reports", type=bounded(3, 100_000), help="render a seeded sample of this many reports (3..100000)"
    )
    build.add_argument(
        "--image-size", type=bounded(32, 256), help="stored resolution, 32..256 (default from the profile)"
    )
    build.add_argument(
        "--seed", type=bounded(0, SEED_MAX), help="anatomy, sample and split seed (default from the profile)"
    )
    build.add_argument(
        "--canonical-targets",
        action="store_true",
        help="also render each train case into the average patient in a fixed pose (xraygan rec_target: canonical)",
    )
    build.add_argument("--force", action="store_true", help="write into --out even if another command made it")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=_cmd_data_build)

    openi = data.add_parser("import-openi", help="import the real Open-i images and reports")
    openi.add_argument("--reports", required=True, help="directory or .tgz of Open-i report XML")
    openi.add_argument("--images", required=True, help="directory of Open-i PNGs (CXR<n>_IM-....png)")
    openi.add_argument("--out", required=True, help="output data directory")
    openi.add_argument("--metadata", help="view metadata CSV (default: the one shipped in torchxrayvision)")
    openi.add_argument("--size", type=bounded(8, 4096), default=256, help="stored resolution, 8..4096 (default 256)")
    openi.add_argument("--seed", type=bounded(0, SEED_MAX), default=0, help="split seed")
    openi.add_argument("--force", action="store_true", help="write into --out even if another command made it")
    openi.set_defaults(func=_cmd_import_openi)

    mimic = data.add_parser("import-mimic", help="import MIMIC-CXR-JPG studies")
    mimic.add_argument("--root", required=True, help="MIMIC-CXR-JPG root (metadata CSV, files/p10/...)")
    mimic.add_argument("--out", required=True, help="output data directory")
    mimic.add_argument("--size", type=bounded(8, 4096), default=256, help="stored resolution, 8..4096 (default 256)")
    mimic.add_argument("--seed", type=bounded(0, SEED_MAX), default=0, help="split seed")
    mimic.add_argument("--force", action="store_true", help="write into --out even if another command made it")
    mimic.add_argument("--subset", default="p10", help="patient folder group to import, '' for all (default p10)")
    mimic.set_defaults(func=_cmd_import_mimic)

    phantom = commands.add_parser("phantom", help="render frontal.png and lateral.png for a report you type")
    source = phantom.add_mutually_exclusive_group(required=True)
    source.add_argument("--report", help="report text, e.g. 'Mild cardiomegaly. Small left pleural effusion.'")
    source.add_argument("--report-file", help="file holding the report text")
    phantom.add_argument(
        "--seed", type=bounded(0, SEED_MAX), default=0, help="patient seed: the same seed is the same body"
    )
    phantom.add_argument("--size", type=bounded(32, 256), default=256, help="image size, 32..256 (default 256)")
    phantom.add_argument("--out", default="phantom_out", help="output directory (default phantom_out)")
    phantom.add_argument("--force", action="store_true", help="write into --out even if something else made it")
    phantom.set_defaults(func=_cmd_phantom)

    bench = commands.add_parser("bench", help="benchmarks that print their figures").add_subparsers(
        dest="bench_command", required=True
    )
    bench_data = bench.add_parser("data", help="phantom rendering throughput (pairs/s)")
    bench_data.add_argument(
        "--sizes", type=bounded(32, 256), nargs="+", default=[128, 256], help="image sizes, 32..256 (default 128 256)"
    )
    bench_data.add_argument(
        "--pairs", type=bounded(1, 10_000), default=40, help="pairs rendered per size, 1..10000 (default 40)"
    )
    bench_data.add_argument("--workers", type=bounded(1, 64), default=2, help="processes, 1..64 (default 2)")
    bench_data.set_defaults(func=_cmd_bench_data)
    bench_variety = bench.add_parser("variety", help="how different the phantom's normal patients are")
    bench_variety.add_argument(
        "--patients", type=bounded(2, 1000), default=16, help="patient seeds rendered, 2..1000 (default 16)"
    )
    bench_variety.add_argument("--size", type=bounded(32, 256), default=64, help="image size, 32..256 (default 64)")
    bench_variety.add_argument(
        "--first-seed", type=bounded(0, SEED_MAX), default=0, help="first patient seed (default 0)"
    )
    bench_variety.set_defaults(func=_cmd_bench_variety)
    bench_train = bench.add_parser(
        "train", help="training images/s per stage: XRayGAN, the baselines, PGGAN or DiffuseVAE (synthetic batches)"
    )
    bench_train.add_argument("--profile", default="cpu", help="tiny | cpu | paper | profile YAML (default cpu)")
    bench_train.add_argument(
        "--family",
        choices=("xraygan", "baselines", "pggan", "diffusevae"),
        default="xraygan",
        help="the model family timed (default xraygan)",
    )
    bench_train.add_argument(
        "--steps", type=bounded(1, 1000), default=3, help="timed steps per phase, 1..1000 (default 3)"
    )
    bench_train.add_argument(
        "--train-cases",
        type=bounded(1, 10_000_000),
        default=2700,
        help="train split size for the epoch-time estimate (default 2700, the cpu dataset)",
    )
    bench_train.add_argument("--device", type=device_name, help="cpu | cuda (default cuda when available)")
    bench_train.add_argument(
        "--precision", choices=("float32", "bfloat16"), help="arithmetic of the XRayGAN steps (default: the profile's)"
    )
    bench_train.add_argument(
        "--channels-last", action="store_true", help="XRayGAN steps with NHWC weights (default: the profile's)"
    )
    bench_train.add_argument(
        "--reference",
        action="store_true",
        help="time each GAN step against a plain eager float32 reference step and print the speed-up",
    )
    bench_train.add_argument(
        "--jsonl", help="append the rows (with FLOPs, fraction of peak, memory) to this JSON-lines file"
    )
    bench_train.set_defaults(func=_cmd_bench_train)
    bench_generate = bench.add_parser("generate", help="report → frontal/lateral pair latency")
    bench_generate.add_argument(
        "--profile", default="cpu", help="profile of the untrained model timed without --checkpoint"
    )
    bench_generate.add_argument("--checkpoint", help="a run directory or XRayGAN checkpoint file")
    bench_generate.add_argument(
        "--n", type=bounded(1, 10_000), default=20, help="reports timed per device, 1..10000 (default 20)"
    )
    bench_generate.set_defaults(func=_cmd_bench_generate)
    bench_diffusion = bench.add_parser("diffusion", help="DiffuseVAE sampling images/s: DDIM step counts and ancestral")
    bench_diffusion.add_argument(
        "--profile", default="cpu", help="profile of the untrained model timed without --checkpoint"
    )
    bench_diffusion.add_argument("--checkpoint", help="a DiffuseVAE run directory or checkpoint file")
    bench_diffusion.add_argument("--steps", type=bounded(1, 100_000), nargs="+", default=[5, 10, 25, 50],
                                 help="DDIM step counts (default 5 10 25 50)")  # fmt: skip
    bench_diffusion.add_argument("--images", type=bounded(1, 4096), default=16, help="images per batch (default 16)")
    bench_diffusion.add_argument(
        "--repeats", type=bounded(1, 100), default=3, help="timed batches per sampler (default 3)"
    )
    bench_diffusion.add_argument(
        "--no-ancestral", action="store_true", help="skip ancestral sampling over all T (slow)"
    )
    bench_diffusion.add_argument("--device", type=device_name, default="cpu", help="cpu | cuda (default cpu)")
    bench_diffusion.set_defaults(func=_cmd_bench_diffusion)
    bench_explorer = bench.add_parser("explorer", help="report explorer response seconds (generate and each edit)")
    bench_explorer.add_argument("--run-dir", required=True, help="an XRayGAN run directory or checkpoint file")
    bench_explorer.add_argument("--data-dir", help="time the test reports of this data directory (default: built-in)")
    bench_explorer.add_argument("--n", type=bounded(1, 1000), default=10, help="reports timed, 1..1000 (default 10)")
    bench_explorer.add_argument(
        "--seed", type=bounded(0, SEED_MAX), default=0, help="noise seed and default phantom patient"
    )
    bench_explorer.set_defaults(func=_cmd_bench_explorer)
    bench_latent = bench.add_parser("pggan-explorer", help="PGGAN latent explorer response seconds")
    bench_latent.add_argument("--run-dir", required=True, help="a PGGAN run directory or checkpoint file")
    bench_latent.add_argument("--classifier", required=True, help="its search classifier (OUT/search_*.pt)")
    bench_latent.add_argument("--evaluators", help="evaluators directory: time the evaluator's logits too")
    bench_latent.add_argument("--class", dest="class_name", help="the class searched for (default: the first)")
    bench_latent.add_argument("--repeats", type=bounded(1, 1000), default=5, help="times per response (default 5)")
    bench_latent.add_argument("--max-steps", type=bounded(1, 10_000), default=100, help="search budget (default 100)")
    bench_latent.add_argument("--seed", type=bounded(0, SEED_MAX), default=0, help="first patient seed (default 0)")
    bench_latent.set_defaults(func=_cmd_bench_pggan_explorer)

    train = commands.add_parser(
        "train", help="train XRayGAN, a Table-1 baseline, the view-consistency networks or PGGAN"
    ).add_subparsers(dest="train_command", required=True)
    xraygan = train.add_parser("xraygan", help="train XRayGAN stage by stage (trains missing VCNs first)")
    baseline = train.add_parser("baseline", help="train GAN-INT-CLS, StackGAN or AttnGAN with XRayGAN's report encoder")
    vcn = train.add_parser("vcn", help="train the view-consistency networks of every stage size")
    pggan = train.add_parser("pggan", help="train the unconditional progressive GAN, 4² up to its final size")
    diffusevae = train.add_parser(
        "diffusevae", help="train one stage of DiffuseVAE + MoCo: vae, moco, ddpm (needs vae), finetune (needs both)"
    )
    pathology = train.add_parser(
        "pathology", help="train the search classifier of latent class optimisation (DenseNet-121 or the PGGAN critic)"
    )
    for sub in (xraygan, baseline, vcn, pggan, diffusevae, pathology):
        sub.add_argument("--profile", default="cpu", help="tiny | cpu | paper | profile YAML (default cpu)")
        sub.add_argument("--data", required=True, help="data directory (xrg data build / import)")
        sub.add_argument("--out", required=True, help="run directory")
        sub.add_argument("--device", type=device_name, default="cpu", help="cpu | cuda (default cpu)")
        sub.add_argument("--force", action="store_true", help="train into --out even if something else made it")
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
    xraygan.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override an xraygan setting, e.g. --set vc_weight=0 or --set model.hidden=64 (repeatable)",
    )
    xraygan.add_argument(
        "--vcn-set", action="append", metavar="KEY=VALUE", help="override a vcn setting, e.g. model.embed_dim=64"
    )
    xraygan.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    xraygan.add_argument(
        "--max-steps", type=bounded(1, 10**9), help="stop with a checkpoint once the run has done this many steps"
    )
    xraygan.set_defaults(func=_cmd_train_xraygan)
    baseline.add_argument(
        "--method", required=True, choices=("gan_int_cls", "stackgan", "attngan"), help="which baseline"
    )
    baseline.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a baselines setting, e.g. --set rec_weight=100, --set model.ca_dim=64 (repeatable)",
    )
    baseline.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    baseline.add_argument(
        "--max-steps", type=bounded(1, 10**9), help="stop with a checkpoint once the run has done this many steps"
    )
    baseline.set_defaults(func=_cmd_train_baseline)
    pggan.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a pggan setting, e.g. --set view=lateral or --set model.latent_dim=128 (repeatable)",
    )
    pggan.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    pggan.add_argument(
        "--max-steps", type=bounded(1, 10**9), help="stop with a checkpoint once the run has done this many steps"
    )
    pggan.set_defaults(func=_cmd_train_pggan)
    diffusevae.add_argument(
        "--stage", required=True, choices=("vae", "moco", "ddpm", "finetune"), help="the stage trained"
    )
    diffusevae.add_argument(
        "--moco", help="finetune: the MoCo run to use (default OUT/moco), e.g. one without clustering"
    )
    diffusevae.add_argument("--ddpm", help="finetune: the DDPM run to start from (default OUT/ddpm)")
    diffusevae.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a diffusevae setting, e.g. --set condition.mode=report or --set ddpm.model.timesteps=500",
    )
    diffusevae.add_argument(
        "--resume", action="store_true", help="continue the stage's run in --out from its checkpoint"
    )
    diffusevae.add_argument(
        "--max-steps", type=bounded(1, 10**9), help="stop with a checkpoint once the run has done this many steps"
    )
    diffusevae.set_defaults(func=_cmd_train_diffusevae)
    pathology.add_argument("--backbone", choices=("densenet", "critic"), default="densenet", help="default densenet")
    pathology.add_argument("--pggan", help="the trained PGGAN run whose critic the critic backbone starts from")
    pathology.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a pathology setting, e.g. --set num_epochs=2"
    )
    pathology.set_defaults(func=_cmd_train_pathology)

    pggan_commands = commands.add_parser("pggan", help="pathology images from a trained PGGAN").add_subparsers(
        dest="pggan_command", required=True
    )
    sample = pggan_commands.add_parser(
        "sample",
        help="search the latent space for images of a finding; PNGs and a manifest of both classifiers' logits",
    )
    sample.add_argument("--checkpoint", required=True, help="a PGGAN run directory or its checkpoint file")
    sample.add_argument(
        "--classifier", required=True, help="the search classifier (xrg train pathology: OUT/search_*.pt)"
    )
    sample.add_argument("--class", dest="class_name", required=True, help="the finding, e.g. cardiomegaly")
    sample.add_argument(
        "--severity",
        type=open_interval(0, 1),
        help="a probability the class must reach (default: the classifier's threshold)",
    )
    sample.add_argument("--n", type=bounded(1, 10_000), default=8, help="searches (default 8)")
    sample.add_argument("--seed", type=bounded(0, SEED_MAX), default=0, help="search i starts from seed + i")
    sample.add_argument(
        "--max-steps", type=bounded(0, 100_000), default=200, help="step budget per search (default 200)"
    )
    sample.add_argument("--lr", type=open_interval(0, 100), default=0.05, help="gradient step size (default 0.05)")
    sample.add_argument(
        "--regulariser",
        choices=("none", "norm", "truncate"),
        default="none",
        help="keep z near the prior (default none)",
    )
    sample.add_argument("--evaluators", help="evaluators directory whose independent classifier confirms each image")
    sample.add_argument("--out", required=True, help="output directory")
    sample.add_argument("--force", action="store_true", help="write into --out even if something else made it")
    sample.add_argument("--device", type=device_name, default="cpu", help="cpu | cuda (default cpu)")
    sample.set_defaults(func=_cmd_pggan_sample)
    diffusevae_commands = commands.add_parser("diffusevae", help="samples from a trained DiffuseVAE").add_subparsers(
        dest="diffusevae_command", required=True
    )
    dsample = diffusevae_commands.add_parser(
        "sample", help="sample images of a finding set or a report; PNGs and a manifest"
    )
    dsample.add_argument(
        "--checkpoint", required=True, help="a DiffuseVAE run directory (its finetune, else ddpm stage) or a checkpoint"
    )
    prompt = dsample.add_mutually_exclusive_group(required=True)
    prompt.add_argument(
        "--condition", help="findings, ';' between them, e.g. 'pleural effusion; cardiomegaly' or 'normal'"
    )
    prompt.add_argument("--report", help="report text, e.g. 'FINDINGS: Small left pleural effusion.'")
    prompt.add_argument("--report-file", help="file holding the report text")
    dsample.add_argument("--n", type=bounded(1, 10_000), default=8, help="samples (default 8)")
    dsample.add_argument("--seed", type=bounded(0, SEED_MAX), default=0, help="seed of the noise (default 0)")
    dsample.add_argument(
        "--steps", type=bounded(1, 100_000), help="DDIM steps (default: ancestral sampling over every timestep)"
    )
    dsample.add_argument(
        "--eta",
        type=closed_interval(0, 1),
        default=1.0,
        help="DDIM η in [0, 1]: 1 stochastic (default; cleaner images from a briefly trained model), 0 deterministic",
    )
    dsample.add_argument("--guidance", type=closed_interval(0, 100), default=1.0,
                         help="classifier-free guidance scale: 0 unconditional, 1 conditional (default), >1 guided")  # fmt: skip
    dsample.add_argument("--out", required=True, help="output directory")
    dsample.add_argument("--force", action="store_true", help="write into --out even if something else made it")
    dsample.add_argument("--device", type=device_name, default="cpu", help="cpu | cuda (default cpu)")
    dsample.add_argument("--quiet", action="store_true", help="no progress bar")
    dsample.set_defaults(func=_cmd_diffusevae_sample)
    vcn.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a vcn setting, e.g. lr=0.01 (repeatable)"
    )
    vcn.add_argument(
        "--sizes",
        type=bounded(8, 1024),
        nargs="+",
        help="resolutions, 8..1024 (default: the profile's XRayGAN stage sizes)",
    )
    vcn.set_defaults(func=_cmd_train_vcn)

    generate = commands.add_parser("generate", help="generate frontal.png and lateral.png from a report")
    source = generate.add_mutually_exclusive_group(required=True)
    source.add_argument("--report", help="report text, e.g. 'FINDINGS: Mild cardiomegaly. IMPRESSION: ...'")
    source.add_argument("--report-file", help="file holding the report text")
    generate.add_argument("--checkpoint", required=True, help="a run directory or an XRayGAN checkpoint file")
    generate.add_argument("--out", default="generated", help="output directory (default generated)")
    generate.add_argument(
        "--seed", type=bounded(0, SEED_MAX), default=0, help="noise seed (only for models with noise_dim > 0)"
    )
    generate.add_argument("--force", action="store_true", help="write into --out even if something else made it")
    generate.add_argument("--device", type=device_name, default="cpu", help="cpu | cuda (default cpu)")
    generate.set_defaults(func=_cmd_generate)

    evaluate = commands.add_parser(
        "eval", help="score a trained run (KID, FID, SSIM, VC, detection, controllability ...) → RUN/eval.json"
    )
    evaluate.add_argument("--run", required=True, help="run directory (XRayGAN, an ablation or a baseline)")
    evaluate.add_argument("--data", required=True, help="the data directory the run was trained on")
    evaluate.add_argument(
        "--profile", default="cpu", help="profile whose eval and evaluator sections apply (default cpu)"
    )
    evaluate.add_argument("--evaluators", help="evaluator directory (default runs/<profile>/experiments/evaluators)")
    evaluate.add_argument(
        "--inception-weights", help="local file of the FID Inception weights (optional, never downloaded)"
    )
    evaluate.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="split scored: test (the tables, RUN/eval.json) or val (decisions while developing, RUN/eval-val.json)",
    )
    evaluate.add_argument("--device", type=device_name, default="cpu", help="cpu | cuda (default cpu)")
    evaluate.add_argument("--force", action="store_true", help="recompute even when eval.json is up to date")
    evaluate.add_argument(
        "--force-evaluators", action="store_true", help="use --evaluators even if something else made it"
    )
    evaluate.set_defaults(func=_cmd_eval)

    experiment = commands.add_parser("experiment", help="train what is missing and write the paper's Table 1 or 2")
    experiment.add_argument("table", choices=("table1", "table2"), help="table1: baselines, table2: ablations")
    experiment.add_argument("--profile", default="cpu", help="tiny | cpu | paper | profile YAML (default cpu)")
    experiment.add_argument("--data", required=True, help="data directory (xrg data build)")
    experiment.add_argument("--out", required=True, help="experiment directory: one run per method, the tables")
    experiment.add_argument("--inception-weights", help="local file of the FID Inception weights (optional)")
    experiment.add_argument("--device", type=device_name, default="cpu", help="cpu | cuda (default cpu)")
    experiment.add_argument("--force", action="store_true", help="write into --out even if something else made it")
    experiment.set_defaults(func=_cmd_experiment)

    book = commands.add_parser("book", help="execute and render the book").add_subparsers(
        dest="book_command", required=True
    )
    run = book.add_parser("run", help="build the data and execute the notebooks with papermill")
    run.add_argument("--profile", default="cpu", help="tiny | cpu | paper | profile YAML (default cpu)")
    run.add_argument("--params", help="YAML file of notebook parameters overriding the profile's")
    run.add_argument("--only", action="append", help="execute only this notebook (repeatable), e.g. 01_data")
    run.add_argument("--force", action="store_true", help="re-execute even when results are up to date")
    run.set_defaults(func=_cmd_book_run)
    html = book.add_parser("build", help="render the executed notebooks and pages with Jupyter Book")
    html.add_argument("--no-strict", action="store_true", help="do not turn warnings into errors")
    html.set_defaults(func=_cmd_book_build)
    return parser


def _one_line(exc: BaseException) -> str:
    """An error as one line: its message, or for an OSError its reason and the file it names."""
    if isinstance(exc, OSError) and not isinstance(exc, XrgError) and exc.strerror:
        names = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
        text = f"{exc.strerror}: {names}" if names else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "train_command", None):
            _join_torchrun(args)
        status = args.func(args)
    except TrainingStopped as exc:
        # A VCN or evaluator training stopped by SIGINT/SIGTERM: the same command continues it.
        print(f"xrg: {exc}")
        print(f"resume with: {shlex.join(['xrg', *argv])}")
        return 130
    except KeyboardInterrupt:
        print("xrg: interrupted", file=sys.stderr)
        return 130
    except (XrgError, OSError, ValueError, MemoryError) as exc:
        # Bad input, a file that cannot be read or written, a full disk: one line, no traceback.
        if os.environ.get("XRG_DEBUG") and not isinstance(exc, XrgError):
            raise
        print(f"xrg: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. torch's RuntimeError for an allocation a setting made too large
        if os.environ.get("XRG_DEBUG"):
            raise
        print(f"xrg: error: {type(exc).__name__}: {_one_line(exc)[:500]} (XRG_DEBUG=1 shows where)", file=sys.stderr)
        return 2
    finally:
        if getattr(args, "train_command", None):
            from xrg.train.distributed import shutdown

            shutdown()
    return status or 0


def _join_torchrun(args: argparse.Namespace) -> None:
    """Under ``torchrun``: join its process group, take this rank's GPU, keep stdout to rank 0."""
    from xrg.train.distributed import init_from_environment, local_device

    world = init_from_environment(args.device)
    if not world.distributed:
        return
    args.device = str(local_device(args.device))
    if world.rank > 0:  # one copy of every printed line; errors still reach stderr from every rank
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the rest of the process


if __name__ == "__main__":
    sys.exit(main())
