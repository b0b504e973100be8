"""PGGAN: its layers, growth and fade-in, the moving average, its training and its refusals.

The bit-exact resume is in tests/test_resume.py with every other trainer's.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import PGGAN_TINY, metric_rows, replaced, torch_threads, write_synthetic_data
from xrg.checkpoint import load_checkpoint
from xrg.errors import CheckpointError, ConfigError, TrainingDiverged
from xrg.models.pggan import (
    PGGAN,
    Critic,
    EqualizedConv2d,
    Generator,
    PGGANModelConfig,
    minibatch_stddev,
    pixel_norm,
    truncated_normal,
    upsample,
)
from xrg.profiles import load_profile
from xrg.train.loop import Position
from xrg.train.pggan import PGGANTrainConfig, PGGANTrainer, fade_alpha, stage_reals, training_phases

SMALL = PGGANModelConfig(final_size=16, latent_dim=8, channel_base=128, max_channels=16)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


# ---- layers ---------------------------------------------------------------------------


def test_the_equalised_convolution_scales_unit_weights_by_hes_constant():
    torch.manual_seed(0)
    conv = EqualizedConv2d(6, 5, 3)
    assert conv.weight.std().item() == pytest.approx(1.0, abs=0.2)  # stored as N(0, 1) …
    assert conv.scale == pytest.approx(math.sqrt(2) / math.sqrt(6 * 9))  # … and scaled at run time
    x = torch.randn(2, 6, 7, 7)
    expected = F.conv2d(x, conv.weight * conv.scale, conv.bias, padding=1)
    assert torch.allclose(conv(x), expected)


def test_pixel_norm_gives_every_position_unit_root_mean_square_over_channels():
    x = torch.randn(3, 8, 5, 5) * torch.linspace(0.1, 10, 8).view(1, 8, 1, 1)
    rms = pixel_norm(x).pow(2).mean(dim=1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-4)


def test_minibatch_stddev_adds_the_groups_spread_as_one_map():
    same = torch.ones(4, 3, 2, 2)
    out = minibatch_stddev(same, group_size=4)
    assert out.shape == (4, 4, 2, 2) and torch.equal(out[:, :3], same)
    assert out[:, 3].max().item() < 1e-3  # identical images: no spread
    # two groups of two (image i in group i mod 2): images 0, 2 differ by 2, images 1, 3 are equal
    x = torch.stack([torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), torch.full((1, 1, 1), 2.0), torch.zeros(1, 1, 1)])
    stat = minibatch_stddev(x, group_size=2)[:, 1, 0, 0]
    assert stat[0].item() == pytest.approx(1.0, abs=1e-3) and stat[2].item() == pytest.approx(1.0, abs=1e-3)
    assert stat[1].item() < 1e-3 and stat[3].item() < 1e-3
    # a batch of 3 with groups of 4: groups of the largest divisor (3), still one map
    assert minibatch_stddev(torch.randn(3, 2, 4, 4), group_size=4).shape == (3, 3, 4, 4)


def test_truncated_latents_stay_within_the_threshold_and_repeat_with_the_seed():
    z = truncated_normal((200, 16), 0.7, torch.Generator().manual_seed(1))
    assert z.abs().max().item() <= 0.7 and z.std().item() > 0.3
    assert torch.equal(z, truncated_normal((200, 16), 0.7, torch.Generator().manual_seed(1)))
    assert truncated_normal((500, 4), None, torch.Generator().manual_seed(0)).abs().max() > 0.7
    with pytest.raises(ValueError, match="positive"):
        truncated_normal((2, 2), 0.0)


# ---- growth and fade-in ---------------------------------------------------------------------


def test_every_stage_draws_its_resolution_and_the_critic_scores_it():
    torch.manual_seed(0)
    generator, critic = Generator(SMALL), Critic(SMALL)
    z = torch.randn(4, SMALL.latent_dim)
    assert SMALL.num_stages == 3 and [SMALL.stage_size(s) for s in range(3)] == [4, 8, 16]
    for stage, size in enumerate((4, 8, 16)):
        image = generator(z, stage, alpha=0.5)
        assert image.shape == (4, 1, size, size)
        assert critic(image, stage, alpha=0.5).shape == (4,)
        assert critic.features(image, stage).shape == (4, critic.num_features)
    assert generator(z).shape[-1] == 16  # the final stage by default
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\]"):
        critic(torch.zeros(2, 1, 16, 16), stage=1)
    with pytest.raises(ValueError, match="z must be"):
        generator(torch.zeros(2, 3))


def test_fade_in_starts_from_the_upsampled_previous_stage_and_ends_at_the_new_one():
    torch.manual_seed(0)
    generator, critic = Generator(SMALL), Critic(SMALL)
    z = torch.randn(3, SMALL.latent_dim)
    previous = generator(z, 1)
    assert torch.allclose(generator(z, 2, alpha=0.0), upsample(previous), atol=1e-6)
    new = generator(z, 2, alpha=1.0)
    assert not torch.allclose(new, upsample(previous), atol=1e-3)
    assert torch.allclose(generator(z, 2, alpha=0.25), torch.lerp(upsample(previous), new, 0.25), atol=1e-5)
    # the critic at α = 0 is the previous stage's critic on the downsampled image
    image = torch.randn(3, 1, 16, 16)
    assert torch.allclose(critic(image, 2, alpha=0.0), critic(F.avg_pool2d(image, 2), 1), atol=1e-5)


def test_alpha_ramps_over_the_first_half_of_a_grown_stage_and_reals_fade_alike():
    phases = training_phases(PGGAN_TINY)
    assert [(p.name, p.image_size, p.fade) for p in phases] == [("base", 4, 0.0), ("grow", 8, 0.5), ("grow", 16, 0.5)]
    grow = phases[1]  # 2 epochs of 3 steps: α over the first 3 steps
    alphas = [fade_alpha(grow, Position(epoch=e, batch=b), 3) for e in (0, 1) for b in range(3)]
    assert alphas == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0])
    assert fade_alpha(phases[0], Position(), 3) == 1.0
    images = torch.rand(2, 1, 32, 32)
    sharp = stage_reals(images, 8, 1.0)
    assert sharp.shape == (2, 1, 8, 8) and torch.allclose(sharp, F.avg_pool2d(images * 2 - 1, 4))
    blurred = stage_reals(images, 8, 0.0)
    assert torch.allclose(blurred, upsample(F.avg_pool2d(sharp, 2)), atol=1e-6)


# ---- the moving average -----------------------------------------------------------------------


def test_the_moving_average_follows_the_generator_with_its_half_life_and_ramp_up():
    torch.manual_seed(0)
    model = PGGAN(SMALL)
    start = [p.clone() for p in model.generator_ema.parameters()]
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(1.0)
    beta = model.update_ema(10, half_life_images=10.0, rampup=None)  # one half-life: half-way
    assert beta == pytest.approx(0.5)
    for before, average, current in zip(start, model.generator_ema.parameters(), model.generator.parameters()):
        assert torch.allclose(average, (before + current) / 2, atol=1e-6)
    assert float(model.images_seen) == 10
    # ramped up: after 10 images the half-life is at most 0.5 × 10 = 5 images, so the average moves more
    ramped = PGGAN(SMALL).update_ema(10, half_life_images=1000.0, rampup=0.5)
    assert ramped == pytest.approx(0.5 ** (10 / 5))
    assert not any(p.requires_grad for p in model.generator_ema.parameters())


# ---- training ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pggan_data(tmp_path_factory) -> Path:
    """30 synthetic patients at 32² (18 train cases)."""
    return write_synthetic_data(tmp_path_factory.mktemp("pggan-data"), num_patients=30, image_size=32)


def test_a_tiny_run_trains_every_stage_and_its_checkpoint_generates(pggan_data, tmp_path):
    run = tmp_path / "run"
    result = PGGANTrainer(PGGAN_TINY, pggan_data, run, progress=False).train()
    assert result.finished and result.step == 12
    rows = metric_rows(run)
    assert [(r["image_size"], r["epoch"]) for r in rows] == [(4, 0), (8, 0), (8, 1), (16, 0)]
    assert all(math.isfinite(r["d_loss"]) and math.isfinite(r["g_loss"]) for r in rows)
    assert rows[1]["alpha"] == pytest.approx(1 / 3) and rows[2]["alpha"] == 1.0  # epoch means of α
    assert rows[-1]["variation_real"] > 0 and rows[-1]["variation"] is not None
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "stage0_4px.png",
        "stage1_8px.png",
        "stage2_16px.png",
    ]
    model = PGGAN.from_checkpoint(run / "checkpoint.pt")
    assert not hasattr(model, "critic") and not model.training
    images = model.generate(model.sample_latents(5, seed=3))
    assert images.shape == (5, 1, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, model.generate(model.sample_latents(5, seed=3)))  # the same seed, the same images
    assert not torch.equal(images, model.generate(model.sample_latents(5, seed=4)))
    assert float(model.images_seen) == 12 * 6


def test_the_generator_learns_the_brightness_of_the_real_images(tmp_path):
    """The moving-average samples end with a mean brightness nearer the train images' than the
    untrained generator's: the critic's signal reaches the generator."""
    data = write_synthetic_data(tmp_path / "data", num_patients=30, image_size=8)
    config = PGGANTrainConfig(
        model=PGGANModelConfig(final_size=8, latent_dim=8, channel_base=64, max_channels=8),
        batch_size=(6, 6), num_epochs=(10, 10), num_samples=0, lr=0.005, ema_half_life_images=30.0,
    )  # fmt: skip
    trainer = PGGANTrainer(config, data, tmp_path / "run", progress=False)
    train_set = trainer.train_sets[8]
    real_mean = float(torch.stack([train_set[i]["frontal"] for i in range(len(train_set))]).mul(2).sub(1).mean())
    z = trainer.model.sample_latents(64, seed=0)
    before = abs(float(trainer.model.generate(z).mean()) - real_mean)
    trainer.train()
    after = abs(float(trainer.model.generate(z).mean()) - real_mean)
    assert after < 0.5 * before, (before, after)


def test_bad_settings_and_data_are_refused_by_name(pggan_data, tmp_path):
    with pytest.raises(ConfigError, match="batch_size needs one value per stage"):
        replaced(PGGAN_TINY, batch_size=(6, 6))
    with pytest.raises(ConfigError, match="power of two"):
        PGGANModelConfig(final_size=24)
    with pytest.raises(ConfigError, match="view must be one of"):
        replaced(PGGAN_TINY, view="oblique")
    with pytest.raises(ConfigError, match="fade_fraction"):
        replaced(PGGAN_TINY, fade_fraction=0)
    too_big = replaced(PGGAN_TINY, model={"final_size": 64}, batch_size=(6,) * 5, num_epochs=(1,) * 5)
    with pytest.raises(ConfigError, match=r"stores 32² frontal images.*needs them at least that large"):
        PGGANTrainer(too_big, pggan_data, tmp_path / "big", progress=False)
    assert not (tmp_path / "big" / "checkpoint.pt").exists()


def test_a_resume_with_other_settings_is_refused_and_the_run_kept(pggan_data, tmp_path):
    run = tmp_path / "run"
    PGGANTrainer(PGGAN_TINY, pggan_data, run, progress=False).train(max_steps=2)
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError):
        PGGANTrainer(replaced(PGGAN_TINY, lr=0.01), pggan_data, run, progress=False, resume=True)
    with pytest.raises(CheckpointError, match="already holds a run"):
        PGGANTrainer(PGGAN_TINY, pggan_data, run, progress=False)
    assert (run / "checkpoint.pt").read_bytes() == before
    with pytest.raises(CheckpointError, match="not finished|resume it"):
        PGGAN.from_checkpoint(run / "checkpoint.pt")  # a stopped training is not a trained model
    assert load_checkpoint(run / "checkpoint.pt", "pggan")["progress"]["step"] == 2


def test_a_non_finite_loss_stops_the_run_naming_the_stage(pggan_data, tmp_path, monkeypatch):
    trainer = PGGANTrainer(
        dataclasses.replace(PGGAN_TINY, gp_weight=float("inf")), pggan_data, tmp_path / "r", progress=False
    )
    with pytest.raises(TrainingDiverged, match=r"step 1 \(stage 0, 4px"):
        trainer.train()


def test_every_profile_builds_its_pggan_config():
    sizes = {
        name: PGGANTrainConfig.from_profile(load_profile(name)).model.final_size for name in ("tiny", "cpu", "paper")
    }
    assert sizes == {"tiny": 32, "cpu": 128, "paper": 256}


def test_stage_cases_cap_an_epoch_of_a_stage_to_a_seeded_subset(pggan_data, tmp_path):
    config = replaced(PGGAN_TINY, stage_cases=(0, 6, 12))
    trainer = PGGANTrainer(config, pggan_data, tmp_path / "run", progress=False)
    phases = training_phases(config)
    step = trainer.family
    full = len(step.train_set(phases[0]))
    assert full > 12 and len(step.train_set(phases[1])) == 6 and len(step.train_set(phases[2])) == 12
    assert step.steps_per_epoch(phases[1]) == 1 and step.steps_per_epoch(phases[2]) == 2
    again = PGGANTrainer(config, pggan_data, tmp_path / "again", progress=False).family
    assert again.train_set(phases[1]).indices == step.train_set(phases[1]).indices  # seeded
    assert step.train_set(phases[1]).indices != step.train_set(phases[2]).indices[:6]  # another subset per stage
    result = trainer.train()
    assert result.finished and result.step == step.steps_per_epoch(phases[0]) + 2 * 1 + 2  # epochs (1, 2, 1)
    with pytest.raises(ConfigError, match="stage_cases needs one non-negative integer"):
        replaced(PGGAN_TINY, stage_cases=(0, 6))
    with pytest.raises(ConfigError, match="stage_cases needs one non-negative integer"):
        replaced(PGGAN_TINY, stage_cases=(0, -1, 6))


def test_the_training_benchmark_times_every_stage_of_a_profile():
    from xrg.train.benchmarks import bench_train_pggan

    lines: list[str] = []
    rows = bench_train_pggan("tiny", steps=1, warmup=0, device="cpu", train_cases=40, print_fn=lines.append)
    assert [row["image_size"] for row in rows] == [4, 8, 16, 32]
    assert all(row["images_per_s"] > 0 and row["phase_seconds"] > 0 for row in rows)
    assert "estimated PGGAN training time for 40 train cases" in lines[-1]


def test_the_drift_term_is_in_the_critic_loss():
    """The same step with ε_drift = 0 and ε_drift = 1 differs in the critic loss by exactly E[D(real)²]."""
    from xrg.train.pggan import make_pggan_optimizers, pggan_step

    losses = {}
    for weight in (0.0, 1.0):
        config = replaced(PGGAN_TINY, drift_weight=weight)
        torch.manual_seed(0)
        model = PGGAN(config.model)
        phase = training_phases(config)[1]
        optimizers = make_pggan_optimizers(model, phase, 1, config)
        images = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(2)
        losses[weight] = pggan_step(model, config, phase, images, optimizers, alpha=0.5)
    assert losses[0.0]["drift"] == pytest.approx(losses[1.0]["drift"]) and losses[1.0]["drift"] > 0
    assert losses[1.0]["d_loss"] - losses[0.0]["d_loss"] == pytest.approx(losses[1.0]["drift"], rel=1e-4)


def test_the_notebooks_load_a_finished_run_and_refuse_one_with_other_settings(pggan_data, tmp_path):
    from xrg.train.runs import ensure_pggan_run

    run = tmp_path / "pggan"
    path = ensure_pggan_run("tiny", pggan_data, run, progress=False)
    assert load_checkpoint(path, "pggan")["progress"]["finished"] and (run / "data.json").is_file()
    written = path.stat().st_mtime_ns
    assert ensure_pggan_run("tiny", pggan_data, run, progress=False) == path and path.stat().st_mtime_ns == written
    other = tmp_path / "other"
    PGGANTrainer(PGGAN_TINY, pggan_data, other, progress=False).train()
    with pytest.raises(CheckpointError):
        ensure_pggan_run("tiny", pggan_data, other, progress=False)  # a run with the tiny-test settings, not tiny's
