"""XRayGAN and VCN training (xrg.train): learning, freezing, resume, checkpoints, divergence, metrics.

The bit-exact stop-and-resume check of every trainer is in test_resume.py."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

import xrg
from helpers import (
    VCN_TINY as TINY_VCN,
    XRAYGAN_TINY as TINY,
    metric_rows,
    new_run,
    replaced,
    resealed,
    write_synthetic_data,
)
from xrg.checkpoint import load_checkpoint, save_checkpoint
from xrg.config import config_from_mapping, config_to_dict, parse_overrides
from xrg.data.images import load_grayscale
from xrg.data.reports import Vocabulary
from xrg.errors import CheckpointError, ConfigError, DataDirError, TrainingDiverged
from xrg.models.vcn import ViewConsistencyNet
from xrg.models.xraygan import XRayGAN, XRayGANModelConfig
from xrg.pipelines import XRayGANPipeline
from xrg.profiles import PROFILE_NAMES, PROFILES_DIR, load_profile
from xrg.train.benchmarks import bench_train
from xrg.train.loop import MONITOR_CASES, between_report_variation
from xrg.train.vcn import VCNTrainConfig, load_vcn, negative_partners, train_vcn, vcn_path
from xrg.train.xraygan import METRIC_KEYS, XRayGANTrainConfig, XRayGANTrainer, make_optimizers, training_phases


def trainer(config, data_dir, run, **kwargs) -> XRayGANTrainer:
    return XRayGANTrainer(config, data_dir, run, TINY_VCN, progress=False, **kwargs)


# --------------------------------------------------------------------------------------
# View-consistency network
# --------------------------------------------------------------------------------------


def test_negative_partners_pair_every_case_with_another_patient():
    patients = [f"p{i}" for i in range(9)]
    rows, partners = negative_partners(patients, torch.Generator().manual_seed(1))
    assert rows.tolist() == list(range(9))
    assert all(int(p) != int(r) for r, p in zip(rows, partners))
    assert sorted(partners.tolist()) == list(range(9))  # every lateral used once
    same = ["a", "a", "b"]  # a pair within one patient is dropped, never labelled negative
    rows, partners = negative_partners(same, torch.Generator().manual_seed(0))
    assert all(same[int(r)] != same[int(p)] for r, p in zip(rows, partners))


def test_vcn_separates_same_patient_pairs_and_is_evaluated_frozen(tmp_path):
    data = write_synthetic_data(tmp_path / "data", num_patients=60, image_size=16, seed=3)
    config = VCNTrainConfig(image_size=16, num_epochs=6, batch_size=12, seed=0)
    result = train_vcn(data, config, tmp_path / "run", progress=False)
    assert result.metrics["auroc"] > 0.7, result.metrics
    assert result.metrics["num_positive"] == 12 and result.metrics["num_negative"] == 12  # the 12 test patients
    assert 0.0 < result.metrics["real_vc"] < 1.0
    assert result.model.frozen and not result.model.training
    assert not any(p.requires_grad for p in result.model.parameters())
    assert result.path == vcn_path(tmp_path / "run", 16) and result.path.is_file()
    lines = [json.loads(line) for line in (tmp_path / "run" / "vcn" / "metrics.jsonl").read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["vcn"] * 6 + ["vcn_test"]
    # Train split only: 36 train cases in batches of 12 is 3 steps per epoch.
    assert lines[-2]["step"] == 6 * 3
    reloaded = load_vcn(result.path, config)
    frontal, lateral = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    assert torch.equal(reloaded.model.prob(frontal, lateral), result.model.prob(frontal, lateral))


# --------------------------------------------------------------------------------------
# XRayGAN runs
# --------------------------------------------------------------------------------------


def test_losses_go_down_metrics_and_samples_are_written_and_the_vcn_stays_frozen(tmp_path, data_dir, vcn_run):
    run = new_run(tmp_path, vcn_run)
    config = dataclasses.replace(TINY, num_epochs=(4, 1), lr=(5e-3, 5e-3))
    run_trainer = trainer(config, data_dir, run)
    vcn_before = {size: {k: v.clone() for k, v in r.model.state_dict().items()} for size, r in run_trainer.vcns.items()}
    result = run_trainer.train()
    assert result.finished and result.step == (1 + 4 + 1) * 3

    rows = metric_rows(run)
    assert all(set(row) == set(METRIC_KEYS) for row in rows)
    assert [(row["phase"], row["stage"], row["epoch"]) for row in rows] == (
        [("pretrain", 0, 0)] + [("gan", 0, e) for e in range(4)] + [("gan", 1, 0)]
    )
    gan_rows = [row for row in rows if row["phase"] == "gan"]
    aux_keys = ("aux_d_loss", "aux_g_loss", "findings_loss")  # the findings terms are off (weights 0): null
    assert all(row[key] is not None for row in gan_rows for key in METRIC_KEYS if key not in aux_keys)
    assert all(row[key] is None for row in rows for key in aux_keys)
    assert all(row["d_loss"] is None and row["rec_loss"] is not None for row in rows if row["phase"] == "pretrain")
    assert [row["step"] for row in rows] == [3 * (i + 1) for i in range(len(rows))]
    # The reconstruction error clearly falls: last stage-0 epoch against the first epoch
    # (the reports tell only part of each synthetic image, so it cannot reach zero).
    stage0 = [row["rec_loss"] for row in rows if row["stage"] == 0]
    assert stage0[-1] < 0.65 * stage0[0], stage0
    assert all(0.0 <= row["vc_prob"] <= 1.0 for row in gan_rows)
    # The epoch-end monitor: between-report variation of generated and real validation images.
    assert all(0.0 <= row["variation"] <= 0.5 and 0.0 < row["variation_real"] <= 0.5 for row in rows)
    assert len({row["variation_real"] for row in rows if row["image_size"] == 16}) == 1  # the same real cases

    for name, size in (("pretrain_16px", 16), ("stage0_16px", 16), ("stage1_32px", 32)):
        grid = load_grayscale(run / "samples" / f"{name}.png")
        assert grid.shape == (2 * (size + 2) + 2, 4 * (size + 2) + 2)  # 2 cases x (real, fake) x 2 views

    for size, vcn in run_trainer.vcns.items():
        assert vcn.model.frozen and not vcn.model.training
        assert all(p.grad is None and not p.requires_grad for p in vcn.model.parameters())
        assert all(torch.equal(v, vcn_before[size][k]) for k, v in vcn.model.state_dict().items())


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, vcn_run):
    run = new_run(tmp_path, vcn_run)
    config = dataclasses.replace(TINY, lr=(1e30, 1e30), pretrain_epochs=0)
    with pytest.raises(TrainingDiverged) as caught:
        trainer(config, data_dir, run).train()
    message = str(caught.value)
    assert "diverged at step" in message and "non-finite" in message and str(run / "checkpoint.pt") in message
    step = int(message.split("diverged at step ")[1].split()[0])
    kept = load_checkpoint(run / "checkpoint.pt", "xraygan", config=config)
    assert kept["progress"]["step"] < step
    assert all(
        torch.isfinite(t).all() for state in kept["state"].values() for t in state.values() if t.is_floating_point()
    )


def test_sigint_stops_after_the_step_with_a_checkpoint(tmp_path, data_dir, vcn_run, monkeypatch):
    from xrg.train import xraygan

    calls = []

    def interrupted_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return gan_step(*args, **kwargs)

    gan_step = xraygan.gan_step
    monkeypatch.setattr(xraygan, "gan_step", interrupted_step)
    handler = signal.getsignal(signal.SIGINT)
    run = new_run(tmp_path, vcn_run)
    result = trainer(dataclasses.replace(TINY, pretrain_epochs=0), data_dir, run).train()
    assert not result.finished and result.stopped_by == "SIGINT" and result.step == 2
    assert load_checkpoint(run / "checkpoint.pt", "xraygan")["progress"]["step"] == 2
    assert signal.getsignal(signal.SIGINT) is handler


def test_ablations_train_their_own_parts(tmp_path, data_dir, vcn_run):
    single_shot = replaced(TINY, model={"generator_kind": "single_shot", "encoder_kind": "flat"}, vc_weight=0.0)
    assert [(p.name, p.image_size) for p in training_phases(single_shot)] == [("pretrain", 32), ("gan", 32)]
    assert single_shot.vcn_sizes == ()
    run_trainer = trainer(single_shot, data_dir, tmp_path / "ablation")
    assert run_trainer.vcns == {} and not (tmp_path / "ablation" / "vcn").exists()
    assert run_trainer.train(max_steps=5).step == 5
    rows = metric_rows(tmp_path / "ablation")
    assert {row["image_size"] for row in rows} == {32} and all(row["vc_prob"] is None for row in rows)


def test_a_run_directory_is_not_overwritten_and_resume_needs_a_checkpoint(tmp_path, data_dir, vcn_run):
    run = new_run(tmp_path, vcn_run)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        trainer(TINY, data_dir, run, resume=True)
    trainer(TINY, data_dir, run).train(max_steps=1)
    with pytest.raises(CheckpointError, match="already holds a run"):
        trainer(TINY, data_dir, run)
    with pytest.raises(CheckpointError, match=r"num_epochs: \[2, 2\] → \[2, 3\]"):
        trainer(dataclasses.replace(TINY, num_epochs=(2, 3)), data_dir, run, resume=True)


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory, data_dir) -> Path:
    run = tmp_path_factory.mktemp("checkpoint-run")
    trainer(dataclasses.replace(TINY, vc_weight=0.0), data_dir, run).train(max_steps=2)
    return run / "checkpoint.pt"


def test_checkpoints_load_with_weights_only_and_hold_config_vocabulary_and_version(checkpoint_file, data_dir):
    vocabulary = Vocabulary.load(data_dir / "vocab.json")
    config = dataclasses.replace(TINY, vc_weight=0.0)
    payload = load_checkpoint(checkpoint_file, "xraygan", config=config, vocabulary=vocabulary)
    assert payload["xrg_version"] == xrg.__version__
    assert payload["config"]["lr"] == [2e-3, 2e-3] and payload["vocabulary"]["fingerprint"] == vocabulary.fingerprint
    assert payload["progress"]["step"] == 2 and payload["optimizers"]["generator"]["state"]


def test_a_checkpoint_stores_the_model_config_apart_from_the_run_config(checkpoint_file, data_dir):
    vocabulary = Vocabulary.load(data_dir / "vocab.json")
    config = dataclasses.replace(TINY, vc_weight=0.0)
    payload = load_checkpoint(checkpoint_file, "xraygan", config=config, vocabulary=vocabulary)
    model_config = XRayGANModelConfig.from_run_config(config, len(vocabulary))
    assert payload["config"] == config_to_dict(config) and payload["model_config"] == config_to_dict(model_config)
    assert payload["model_config"]["vocab_size"] == len(vocabulary) and "vocab_size" not in payload["config"]
    # The run config nests its model, vocabulary size left unset; the model config has the real size.
    assert payload["config"]["model"] == config_to_dict(config.model) and payload["config"]["model"]["vocab_size"] == 0
    assert payload["model_config"] == {**payload["config"]["model"], "vocab_size": len(vocabulary)}
    assert {"lr", "vc_weight", "seed"} <= set(payload["config"]) and not {"lr", "vc_weight", "seed"} & set(
        payload["model_config"]
    )
    model = XRayGAN.from_checkpoint(checkpoint_file)  # rebuilt from the model config alone
    assert model.config == model_config and model.checkpoint_info.run_config == payload["config"]


def test_a_checkpoint_of_xrg_0_is_refused_with_how_to_retrain_it(tmp_path, checkpoint_file, vcn_run):
    for kind, source, command in (("xraygan", checkpoint_file, "xrg train xraygan --profile"),
                                  ("vcn", vcn_path(vcn_run, 16), "xrg train vcn --profile")):  # fmt: skip
        payload = torch.load(source, weights_only=True)
        payload["xrg_version"] = "0.1.0"
        payload.pop("model_config")  # as xrg 0.x wrote them
        old = tmp_path / f"old-{kind}.pt"
        torch.save(resealed(payload), old)
        model_class = {"xraygan": XRayGAN, "vcn": ViewConsistencyNet}[kind]
        for load in (
            functools.partial(load_checkpoint, old, kind),
            functools.partial(model_class.from_checkpoint, old),
        ):
            with pytest.raises(
                CheckpointError, match=r"written by an older xrg \(0\.1\.0\), a different major version"
            ) as caught:
                load()
            assert f"retrain it with this xrg: {command}" in str(caught.value)
    with pytest.raises(CheckpointError, match="older xrg"):
        XRayGANPipeline.from_checkpoint(tmp_path / "old-xraygan.pt")


def test_a_checkpoint_of_xrg_1_is_refused_with_how_to_retrain_it(tmp_path, checkpoint_file, vcn_run):
    """xrg 1.x stored run configs with the model fields flat beside the training ones."""
    for kind, source, command in (("xraygan", checkpoint_file, "xrg train xraygan --profile"),
                                  ("vcn", vcn_path(vcn_run, 16), "xrg train vcn --profile")):  # fmt: skip
        payload = torch.load(source, weights_only=True)
        payload["xrg_version"] = "1.0.0"
        stored = dict(payload["config"])
        model = stored.pop("model")
        payload["config"] = {**stored, **{k: v for k, v in model.items() if k != "vocab_size"}}  # the 1.x form
        old = tmp_path / f"v1-{kind}.pt"
        torch.save(resealed(payload), old)
        model_class = {"xraygan": XRayGAN, "vcn": ViewConsistencyNet}[kind]
        for load in (
            functools.partial(load_checkpoint, old, kind),
            functools.partial(load_checkpoint, old, kind, config=replaced(TINY, vc_weight=0.0)),
            functools.partial(model_class.from_checkpoint, old),
        ):
            with pytest.raises(
                CheckpointError, match=r"written by an older xrg \(1\.0\.0\), a different major version"
            ) as caught:
                load()
            message = str(caught.value)
            assert f"retrain it with this xrg: {command}" in message and "not nested under model" in message
            assert "differing fields" not in message
    with pytest.raises(CheckpointError, match=r"older xrg \(1\.0\.0\)"):
        XRayGANPipeline.from_checkpoint(tmp_path / "v1-xraygan.pt")


def test_a_setting_added_after_a_checkpoint_was_written_reads_as_its_default(tmp_path, checkpoint_file):
    # A checkpoint written before `precision` and `channels_last` existed was trained in plain
    # float32 NCHW: it matches a config at those defaults and no other.
    config = dataclasses.replace(TINY, vc_weight=0.0)
    payload = torch.load(checkpoint_file, weights_only=True)
    for name in ("precision", "channels_last"):
        del payload["config"][name]
    older = tmp_path / "older.pt"
    torch.save(resealed(payload), older)
    assert load_checkpoint(older, "xraygan", config=config)["progress"]["step"] == 2
    with pytest.raises(CheckpointError, match=r"precision: \(absent\) → 'bfloat16'"):
        load_checkpoint(older, "xraygan", config=dataclasses.replace(config, precision="bfloat16"))
    with pytest.raises(CheckpointError, match="rec_weight: 100.0 → 50.0"):  # other fields still count
        load_checkpoint(older, "xraygan", config=dataclasses.replace(config, rec_weight=50.0))


def test_bfloat16_channels_last_training_learns_with_float32_weights(tmp_path, data_dir, vcn_run):
    run = new_run(tmp_path, vcn_run)
    config = dataclasses.replace(TINY, num_epochs=(4, 1), lr=(5e-3, 5e-3), precision="bfloat16", channels_last=True)
    run_trainer = trainer(config, data_dir, run)
    convolutions = [p for p in run_trainer.model.parameters() if p.dim() == 4]
    assert convolutions and all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
    assert all(p.dtype == torch.float32 for p in run_trainer.model.parameters())  # autocast leaves weights alone
    result = run_trainer.train()
    assert result.finished
    stage0 = [row["rec_loss"] for row in metric_rows(run) if row["stage"] == 0]
    assert all(map(math.isfinite, stage0)) and stage0[-1] < 0.65 * stage0[0], stage0
    pipeline = XRayGANPipeline.from_checkpoint(run)  # generation reads it as any float32 checkpoint
    output = pipeline("Heart size is normal. No effusion.")
    assert all(
        image.dtype == torch.float32 and torch.isfinite(image).all() for image in (output.frontal, output.lateral)
    )


def test_checkpoint_errors_say_what_is_wrong(tmp_path, checkpoint_file, data_dir, vcn_run):
    config = dataclasses.replace(TINY, vc_weight=0.0)
    data = checkpoint_file.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated, "xraygan")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(garbage, "xraygan")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not an xrg checkpoint"):
        load_checkpoint(foreign, "xraygan")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt", "xraygan")
    with pytest.raises(CheckpointError, match="is a 'xraygan' checkpoint, expected 'vcn'"):
        load_checkpoint(checkpoint_file, "vcn")
    with pytest.raises(CheckpointError, match="is a 'vcn' checkpoint, expected 'xraygan'"):
        load_checkpoint(vcn_path(vcn_run, 16), "xraygan")
    other = replaced(config, model={"hidden": 16}, rec_weight=50.0)
    with pytest.raises(CheckpointError, match="model.hidden: 8 → 16; rec_weight: 100.0 → 50.0"):
        load_checkpoint(checkpoint_file, "xraygan", config=other)
    with pytest.raises(CheckpointError, match="another vocabulary"):
        load_checkpoint(checkpoint_file, "xraygan", vocabulary=Vocabulary.build(["other words entirely"]))
    future = tmp_path / "future.pt"
    save_checkpoint(future, "vcn", TINY_VCN, Vocabulary.load(data_dir / "vocab.json"), state={})
    payload = torch.load(future, weights_only=True)
    payload["xrg_version"] = "99.0.0"
    torch.save(resealed(payload), future)
    with pytest.raises(CheckpointError, match="different major version"):
        load_checkpoint(future, "vcn")


# --------------------------------------------------------------------------------------
# Configs, profiles, benchmark
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_every_profile_builds_both_configs(name):
    profile = load_profile(name)
    config = XRayGANTrainConfig.from_profile(profile)
    # the stored renders are at least the final size (cpu keeps 128² renders for PGGAN: XRayGAN reads them at 64²)
    assert config.final_size <= profile.data["image_size"] and (config.final_size == profile.data["image_size"]) == (
        name == "paper"
    )
    for size in config.vcn_sizes:
        assert VCNTrainConfig.from_profile(profile, image_size=size).image_size == size


def test_configs_refuse_unknown_or_inconsistent_settings():
    with pytest.raises(ConfigError, match=r"unknown settings \['learning_rate'\]"):
        config_from_mapping(XRayGANTrainConfig, {"learning_rate": 1.0})
    with pytest.raises(ConfigError, match="one value per stage"):
        XRayGANTrainConfig(model=XRayGANModelConfig(num_stages=2))
    with pytest.raises(ConfigError, match="generator_kind"):
        XRayGANTrainConfig(model=XRayGANModelConfig(generator_kind="stacked"))
    with pytest.raises(ConfigError, match="leaves vocab_size unset"):
        XRayGANTrainConfig(model=XRayGANModelConfig(vocab_size=40))
    with pytest.raises(ConfigError, match="precision must be one of"):
        XRayGANTrainConfig(precision="float16")
    with pytest.raises(ConfigError, match="channels_last must be true or false"):
        XRayGANTrainConfig(channels_last="yes")
    with pytest.raises(ConfigError, match="batch_size must be int, got 4.5"):
        config_from_mapping(XRayGANTrainConfig, {"batch_size": [4.5, 4, 4, 4]})
    overrides = parse_overrides(
        ["vc_weight=0", "model.num_stages=2", "lr=[1e-4, 2]", "batch_size=[4, 4]", "num_epochs=[1, 1]"]
    )
    assert overrides["lr"] == ["1e-4", 2]  # YAML 1.1 reads 1e-4 as a string; the config converts it
    assert overrides["model"] == {"num_stages": 2}
    config = config_from_mapping(XRayGANTrainConfig, overrides)
    assert config.lr == (1e-4, 2.0) and config.vc_weight == 0.0 and config.vcn_sizes == ()
    assert config.model.num_stages == 2 and [p.stage for p in training_phases(config)] == [0, 0, 1]
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["vc_weight"])
    for bad in ("model.=3", ".hidden=3", "model..hidden=3"):
        with pytest.raises(ConfigError, match="is not a setting name"):
            parse_overrides([bad])


def test_nested_model_settings_from_a_profile_and_from_set_reach_the_model(tmp_path):
    text = (PROFILES_DIR / "tiny.yaml").read_text(encoding="utf-8")
    assert "\n  model:" in text and "\n    hidden: 16" in text  # the tiny profile nests its architecture
    profile = load_profile("tiny")
    config = XRayGANTrainConfig.from_profile(profile)
    assert (config.model.hidden, config.model.base_size, config.model.num_stages) == (16, 16, 2)
    assert config.model_for(40).encoder_config().hidden == 16
    changed = XRayGANTrainConfig.from_profile(profile, parse_overrides(["model.hidden=12", "model.noise_dim=3"]))
    assert (changed.model.hidden, changed.model.noise_dim, changed.model.base_size) == (12, 3, 16)
    assert changed.lr == config.lr  # the rest of the section is kept
    model = XRayGAN(changed.model_for(40))
    assert model.encoder.findings.hidden == 12 and model.generator.config.cond_dim == 48
    assert model.generator.config.noise_dim == 3
    # The profile's own nested mapping merges with a nested override key by key.
    written = tmp_path / "nested.yaml"
    written.write_text(text.replace("    hidden: 16", "    hidden: 10\n    share_embedding: false"), encoding="utf-8")
    nested = XRayGANTrainConfig.from_profile(load_profile(written), {"model": {"flat_pooling": "last"}})
    assert (nested.model.hidden, nested.model.share_embedding, nested.model.flat_pooling) == (10, False, "last")
    assert nested.model.embed_dim == 16
    encoder = XRayGAN(nested.model_for(40)).encoder
    assert encoder.config.share_embedding is False and encoder.config.flat_pooling == "last"
    assert encoder.findings.embedding is not encoder.impression.embedding


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_the_ablations_are_model_values_and_are_named_back_from_a_stored_run_config(name):
    from xrg.eval.generators import xraygan_method
    from xrg.experiments import ABLATIONS, xraygan_config

    profile = load_profile(name)
    configs = {method: xraygan_config(profile, method) for method in ABLATIONS}
    assert configs["xraygan_no_hae"].model.encoder_kind == "flat"
    assert configs["xraygan_no_mscgan"].model.generator_kind == "single_shot"
    assert configs["xraygan_no_vcn"].vc_weight == 0.0
    for method, config in configs.items():
        assert xraygan_method(config_to_dict(config)) == method
        # Every row keeps the profile's (and its experiment section's) other architecture settings.
        others = {k: v for k, v in config_to_dict(config.model).items() if k not in ("encoder_kind", "generator_kind")}
        assert others == {k: v for k, v in config_to_dict(configs["xraygan"].model).items() if k in others}


def test_unknown_or_misplaced_nested_settings_are_refused_with_their_dotted_keys():
    profile = load_profile("tiny")
    with pytest.raises(ConfigError, match=r"unknown settings \['xraygan.model.width'\]"):
        XRayGANTrainConfig.from_profile(profile, parse_overrides(["model.width=3"]))
    with pytest.raises(ConfigError, match=r"unknown settings \['xraygan.width'\]"):
        XRayGANTrainConfig.from_profile(profile, parse_overrides(["width.hidden=3"]))
    with pytest.raises(ConfigError, match=r"\['xraygan.hidden'\] \(xraygan.hidden is now xraygan.model.hidden\)"):
        XRayGANTrainConfig.from_profile(profile, parse_overrides(["hidden=32"]))
    with pytest.raises(ConfigError, match="xraygan.model.hidden must be int, got 'wide'"):
        XRayGANTrainConfig.from_profile(profile, parse_overrides(["model.hidden=wide"]))
    with pytest.raises(ConfigError, match="xraygan.model must be a mapping of settings, got 3"):
        XRayGANTrainConfig.from_profile(profile, parse_overrides(["model=3"]))
    with pytest.raises(ConfigError, match="xraygan.model: encoder_kind must be one of"):
        XRayGANTrainConfig.from_profile(profile, parse_overrides(["model.encoder_kind=tree"]))
    with pytest.raises(ConfigError, match=r"unknown settings \['vcn.model.depth'\]"):
        VCNTrainConfig.from_profile(profile, 16, parse_overrides(["model.depth=3"]))
    assert VCNTrainConfig.from_profile(profile, 16, parse_overrides(["model.embed_dim=7"])).model.embed_dim == 7


def test_bench_train_times_every_phase(capsys):
    rows = bench_train("tiny", steps=1, warmup=0, device="cpu", train_cases=30)
    phases = [(row["phase"], row["image_size"]) for row in rows]
    assert phases == [("vcn", 16), ("vcn", 32), ("pretrain", 16), ("gan", 16), ("gan", 32)]
    assert all(row["images_per_s"] > 0 and row["phase_seconds"] > 0 for row in rows)
    assert "images/s" in capsys.readouterr().out


def test_batchnorm_recalibration_makes_eval_mode_match_batch_statistics():
    from torch import nn

    from xrg.train.runtime import recalibrate_batchnorm

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    data = torch.randn(512, 8) * 3 + 5  # far from the initial running statistics (0, 1)
    with torch.no_grad():
        batch_stats = net.train()(data)
        stale = net.eval()(data)
    assert (stale - batch_stats).abs().max() > 0.5
    assert recalibrate_batchnorm(net, lambda: (net(data[i : i + 128]) for i in range(0, 512, 128))) == 1
    assert not net.training and net[1].momentum == 0.1
    with torch.no_grad():
        recalibrated = net(data)
    assert (recalibrated - batch_stats).abs().max() < 0.02
    assert recalibrate_batchnorm(nn.Linear(2, 2), lambda: iter(())) == 0


# --------------------------------------------------------------------------------------
# The epoch-end monitor and the critic's optimiser
# --------------------------------------------------------------------------------------


def test_between_report_variation_is_zero_for_one_image_whatever_the_report():
    same = torch.full((MONITOR_CASES, 1, 8, 8), 0.3)
    assert between_report_variation({"frontal": same, "lateral": same.clone()}) == 0.0
    # two cases, all -1 and all +1: [0, 1] in image range, per-pixel std sqrt(0.5) in both views
    two = torch.cat([-torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4)])
    assert between_report_variation({"frontal": two, "lateral": two}) == pytest.approx(0.5**0.5)
    assert between_report_variation({"frontal": two[:1]}) is None  # one case has no spread


def test_the_critic_learning_rate_scale_and_betas_reach_the_optimiser_and_survive_the_lr_decay():
    config = replaced(TINY, critic_lr_scale=4.0, critic_betas=(0.5, 0.9))
    model = XRayGAN(config.model_for(40))
    phases = training_phases(config)
    gan = next(index for index, phase in enumerate(phases) if phase.name == "gan")
    optimizers = make_optimizers(model, phases[gan], gan, config)
    (g_group,), (d_group,) = optimizers.generator.param_groups, optimizers.discriminator.param_groups
    assert d_group["lr"] == pytest.approx(4.0 * g_group["lr"]) and g_group["lr"] == phases[gan].lr
    assert d_group["betas"] == (0.5, 0.9) and g_group["betas"] == tuple(TINY.betas)
    optimizers.set_lr(1e-5)  # what the loop does at each epoch's start (the decayed rate)
    assert g_group["lr"] == 1e-5 and d_group["lr"] == pytest.approx(4e-5)
    pretrain = make_optimizers(model, phases[0], 0, config)
    assert phases[0].name == "pretrain" and pretrain.discriminator is None
    pretrain.set_lr(1e-5)
    # --set values arrive as lists; bad values are refused with the setting's name
    assert config_from_mapping(XRayGANTrainConfig, {"critic_betas": [0.0, 0.9]}).critic_betas == (0.0, 0.9)
    with pytest.raises(ConfigError, match="critic_betas must be two numbers"):
        replaced(TINY, critic_betas=(1.0, 0.9))
    with pytest.raises(ConfigError, match="critic_lr_scale must be positive"):
        replaced(TINY, critic_lr_scale=0.0)


# --------------------------------------------------------------------------------------
# The canonical-pose reconstruction target
# --------------------------------------------------------------------------------------


def test_the_canonical_target_is_what_the_l2_term_compares_with(tmp_path):
    from xrg.data.datasets import XRayPairDataset, collate_pairs
    from xrg.models.xraygan import to_model_range
    from xrg.train.loop import Optimizers
    from xrg.train.xraygan import pretrain_step

    data = write_synthetic_data(tmp_path / "data", num_patients=10, image_size=16, canonical=True)
    dataset = XRayPairDataset(data, "train", image_size=16, canonical=True)
    batch = collate_pairs([dataset[i] for i in range(len(dataset))])
    assert batch["frontal_canonical"].shape == batch["frontal"].shape
    assert not torch.equal(batch["frontal_canonical"], batch["frontal"])
    for rec_target, suffix in (("canonical", "_canonical"), ("posed", "")):
        config = replaced(TINY, rec_target=rec_target)
        torch.manual_seed(0)
        model = XRayGAN(config.model_for(len(dataset.vocab)))
        phase = training_phases(config)[0]
        with torch.no_grad():
            fake = model.generate(model.encode(batch).c, phase.stage)
        expected = sum(
            torch.nn.functional.mse_loss(fake[view], to_model_range(batch[f"{view}{suffix}"])) for view in fake
        )
        optimizers = Optimizers(0, torch.optim.Adam(model.generator_parameters(phase.stage), lr=1e-3), None)
        losses = pretrain_step(model, batch, phase, optimizers, config)
        assert losses["rec_loss"] == pytest.approx(float(expected), rel=1e-5), rec_target


def test_with_the_canonical_target_the_generator_draws_what_held_out_reports_say(tmp_path):
    from xrg.data.datasets import XRayPairDataset, collate_pairs
    from xrg.models.xraygan import to_image_range

    data = write_synthetic_data(tmp_path / "data", num_patients=40, image_size=16, canonical=True)
    config = replaced(
        TINY, model={"num_stages": 1}, lr=(5e-3,), batch_size=(6,), num_epochs=(1,), pretrain_epochs=12,
        vc_weight=0.0, rec_target="canonical",
    )  # fmt: skip
    run_trainer = XRayGANTrainer(config, data, tmp_path / "run", progress=False)
    assert run_trainer.train().finished
    model = run_trainer.family.model.eval()
    val = XRayPairDataset(data, "val", image_size=16, vocab=run_trainer.family.data.vocabulary)
    batch = collate_pairs([val[i] for i in range(len(val))])
    with torch.no_grad():
        fake = model.generate(model.encode(batch).c, 0)
    brightness = to_image_range(fake["frontal"]).mean(dim=(1, 2, 3))
    dense = torch.tensor(["dense" in text for text in batch["report_text"]])
    assert 0 < int(dense.sum()) < len(dense)
    # the canonical targets differ by 0.7 x (0.7 - 0.3) = 0.28 in mean brightness; one image for
    # every report (a collapsed generator) differs by 0
    gap = float(brightness[dense].mean() - brightness[~dense].mean())
    assert gap > 0.14, gap
    with pytest.raises(ConfigError, match="rec_target must be one of"):
        replaced(TINY, rec_target="fixed")


def test_the_canonical_target_on_data_without_canonical_renders_is_refused(tmp_path, data_dir):
    config = replaced(TINY, vc_weight=0.0, rec_target="canonical")
    with pytest.raises(DataDirError, match="no canonical-pose renders"):
        XRayGANTrainer(config, data_dir, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_train_cases_draws_one_seeded_subset_for_every_stage_and_every_run_with_the_seed(tmp_path, data_dir, vcn_run):
    from xrg.train.loop import TrainData, train_subset

    assert train_subset(18, 0, 0) is None and train_subset(18, 18, 0) is None and train_subset(18, 40, 3) is None
    subset = train_subset(18, 7, 5)
    assert len(subset) == 7 == len(set(subset)) and subset == sorted(subset) and all(0 <= i < 18 for i in subset)
    assert subset == train_subset(18, 7, 5) and subset != train_subset(18, 7, 6)
    with pytest.raises(ConfigError, match="train_cases must be >= 0"):
        train_subset(18, -1, 0)
    for bad in (-3, 2.5, True):
        with pytest.raises(ConfigError, match="train_cases must be an integer >= 0"):
            dataclasses.replace(TINY, train_cases=bad)

    data = TrainData(data_dir, (16, 32), 4, 8, train_cases=7, subset_seed=5)
    assert {size: len(dataset) for size, dataset in data.train_sets.items()} == {16: 7, 32: 7}
    full = TrainData(data_dir, (16,), 4, 8)
    assert len(full.train_sets[16]) == 18 and full.case_indices is None
    chosen = [full.train_sets[16][i]["case_id"] for i in subset]
    assert (
        [data.train_sets[32][i]["case_id"] for i in range(7)]
        == chosen
        == [data.train_sets[16][i]["case_id"] for i in range(7)]
    )
    assert data.vocabulary == full.vocabulary  # the whole split's vocabulary

    # a run with train_cases takes its epochs over the subset only: 6 cases at batch 6 are one step
    # per epoch (the whole split, 18 cases, three)
    run = new_run(tmp_path, vcn_run)
    result = trainer(dataclasses.replace(TINY, train_cases=6), data_dir, run).train()
    assert result.finished and result.step == 1 + 2 + 2


# --------------------------------------------------------------------------------------
# The AC-GAN findings head of the critics
# --------------------------------------------------------------------------------------


def test_the_critics_findings_head_reads_the_image_only_and_shares_the_score_pass():
    from xrg.models.xraygan import PatchDiscriminator

    torch.manual_seed(0)
    critic = PatchDiscriminator(16, cond_dim=8, channels=8, cond_channels=4, max_channels=32, num_classes=5)
    image, c = torch.rand(3, 1, 16, 16) * 2 - 1, torch.randn(3, 8)
    score, logits = critic.score_and_classify(image, c)
    assert logits.shape == (3, 5)
    assert torch.equal(score, critic(image, c))
    # another condition changes the scores, never the finding logits
    other_score, other_logits = critic.score_and_classify(image, torch.randn(3, 8))
    assert not torch.allclose(other_score, score)
    assert torch.equal(other_logits, logits)
    with pytest.raises(ConfigError, match="no findings head"):
        PatchDiscriminator(16, cond_dim=8, channels=8).classify(torch.zeros(1, 8, 8, 8))


def test_one_critic_pass_over_real_and_fake_scores_each_image_as_alone():
    """The critics normalise per sample, so batching the real and the fake images changes no score."""
    from xrg.models.xraygan import PatchDiscriminator
    from xrg.train.xraygan import judge_real_and_fake

    torch.manual_seed(0)
    critic = PatchDiscriminator(16, cond_dim=8, channels=8, cond_channels=4, max_channels=32, num_classes=5)
    real, fake = torch.rand(3, 1, 16, 16) * 2 - 1, (torch.rand(3, 1, 16, 16) * 2 - 1).requires_grad_()
    c, labels = torch.randn(3, 8), torch.randint(0, 2, (3, 5)).float()
    real_score, fake_score, bce = judge_real_and_fake(critic, real, fake, c, labels)
    torch.testing.assert_close(real_score, critic(real, c), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fake_score, critic(fake.detach(), c), rtol=1e-5, atol=1e-6)
    _, logits = critic.score_and_classify(real, c)
    torch.testing.assert_close(bce, torch.nn.functional.binary_cross_entropy_with_logits(logits, labels))
    fake_score.sum().backward()
    assert fake.grad is None  # the fake images are detached: the critic's loss trains the critic only
    assert judge_real_and_fake(critic, real, fake, c, None)[2] == 0


def test_the_findings_term_needs_a_findings_head_with_the_datas_label_count():
    from xrg.data.findings import FINDING_KINDS

    with pytest.raises(ConfigError, match="aux_weight 1.0 needs critics with a findings head"):
        replaced(TINY, aux_weight=1.0)
    with pytest.raises(ConfigError, match="model.critic_classes must be 0"):
        replaced(TINY, model={"critic_classes": 3})
    config = replaced(TINY, aux_weight=1.0, model={"critic_classes": len(FINDING_KINDS)})
    model = XRayGAN(config.model_for(20))
    assert all(
        critic.num_classes == len(FINDING_KINDS)
        for per_view in model.discriminators.values()
        for critic in per_view.values()
    )


def test_the_findings_term_is_the_bce_of_the_heads_and_the_critic_learns_the_labels(tmp_path):
    from xrg.data.datasets import XRayPairDataset, collate_pairs
    from xrg.data.findings import FINDING_KINDS
    from xrg.models.xraygan import to_model_range
    from xrg.train.xraygan import gan_step

    data = write_synthetic_data(tmp_path / "data", num_patients=30, image_size=16, labelled=True)
    dataset = XRayPairDataset(data, "train", image_size=16)
    batch = collate_pairs([dataset[i] for i in range(len(dataset))])
    assert 0 < float(batch["labels"].sum()) < batch["labels"].numel()
    config = replaced(
        TINY, model={"num_stages": 1, "critic_classes": len(FINDING_KINDS)}, lr=(2e-3,), batch_size=(6,),
        num_epochs=(1,), vc_weight=0.0, aux_weight=1.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = XRayGAN(config.model_for(len(dataset.vocab)))
    phase = [phase for phase in training_phases(config) if phase.name == "gan"][0]
    optimizers = make_optimizers(model, phase, 0, config)

    def head_bce(images):
        return sum(
            torch.nn.functional.binary_cross_entropy_with_logits(
                model.discriminators[view]["0"].classify(model.discriminators[view]["0"].image_features(images[view])),
                batch["labels"],
            )
            for view in images
        )

    real = {view: to_model_range(batch[view]) for view in ("frontal", "lateral")}
    with torch.no_grad():
        expected = float(head_bce(real))
    losses = gan_step(model, None, batch, phase, optimizers, config)
    assert losses["aux_d_loss"] == pytest.approx(expected, rel=1e-5)
    for _ in range(120):
        losses = gan_step(model, None, batch, phase, optimizers, config)
    assert losses["aux_d_loss"] < expected and losses["aux_g_loss"] > 0
    # the head has learnt to see an enlarged heart (a wider ellipse) in the real images: a head
    # that only learnt the label frequencies (a bias) gives positives and negatives one logit
    critic = model.discriminators["frontal"]["0"]
    column = FINDING_KINDS.index("cardiomegaly")
    with torch.no_grad():
        logits = critic.classify(critic.image_features(real["frontal"]))[:, column]
    enlarged = batch["labels"][:, column] > 0
    assert 0 < int(enlarged.sum()) < len(enlarged)
    assert float(logits[enlarged].mean() - logits[~enlarged].mean()) > 0.05, logits


def test_the_findings_reward_is_the_frozen_classifiers_bce_and_a_run_keeps_its_reward(tmp_path):
    from xrg.data.datasets import XRayPairDataset, collate_pairs
    from xrg.train.pathology import PathologyTrainConfig, train_pathology_classifier
    from xrg.train.xraygan import FindingsReward, gan_step, pretrain_step

    data = write_synthetic_data(tmp_path / "data", num_patients=30, image_size=16, labelled=True)
    _, _, reward_path = train_pathology_classifier(
        data, PathologyTrainConfig(image_size=32, num_epochs=1, batch_size=6), tmp_path / "reward", progress=False
    )
    with pytest.raises(ConfigError, match="findings_weight 1.0 needs findings_reward"):
        replaced(TINY, findings_weight=1.0)
    config = replaced(
        TINY, model={"num_stages": 1}, lr=(2e-3,), batch_size=(6,), num_epochs=(1,), vc_weight=0.0,
        findings_weight=2.0, findings_reward=str(reward_path),
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="findings_reward .*missing.pt does not exist.*xrg train pathology"):
        XRayGANTrainer(replaced(config, findings_reward=str(tmp_path / "missing.pt")), data, tmp_path / "x")
    reward = FindingsReward.load(reward_path, torch.device("cpu"))
    assert reward.view == "frontal"
    frozen_weights = {k: v.clone() for k, v in reward.classifier.network.state_dict().items()}
    dataset = XRayPairDataset(data, "train", image_size=16)
    batch = collate_pairs([dataset[i] for i in range(6)])
    torch.manual_seed(0)
    model = XRayGAN(config.model_for(len(dataset.vocab)))
    for name in ("pretrain", "gan"):
        phase = [phase for phase in training_phases(config) if phase.name == name][0]
        optimizers = make_optimizers(model, phase, 0, config)
        with torch.no_grad():
            fake = model.generate(model.encode(batch).c, phase.stage)
            expected = torch.nn.functional.binary_cross_entropy_with_logits(
                reward.classifier.logits(fake["frontal"]), batch["labels"]
            )
        step = pretrain_step if name == "pretrain" else functools.partial(gan_step, vcn=None)
        losses = step(model, batch=batch, phase=phase, optimizers=optimizers, config=config, reward=reward)
        assert losses["findings_loss"] == pytest.approx(float(expected), rel=1e-4), name
    after = reward.classifier.network.state_dict()  # frozen: the generator's updates never touch it
    assert all(torch.equal(after[k], v) for k, v in frozen_weights.items())
    run = tmp_path / "run"
    assert XRayGANTrainer(config, data, run, progress=False).train().finished
    rows = metric_rows(run)
    assert rows and all(row["findings_loss"] is not None for row in rows if row["kind"] == "xraygan")
    # a run is resumed only against the reward it was trained with
    train_pathology_classifier(
        data, PathologyTrainConfig(image_size=32, num_epochs=1, batch_size=6, seed=5), tmp_path / "reward",
        progress=False,
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="another findings reward"):
        XRayGANTrainer(config, data, run, progress=False, resume=True)
