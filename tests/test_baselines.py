"""The Table-1 baselines (xrg.train.baselines, xrg.models.baselines): mechanisms, runs, resume, loading.

``data_dir`` is the 30-patient synthetic data of conftest.py (18 train cases); the bit-exact
stop-and-resume check of each method is in test_resume.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from helpers import BASELINE_TINY as TINY, metric_rows, replaced, resealed, torch_threads
from xrg.checkpoint import load_checkpoint
from xrg.config import parse_overrides
from xrg.data.datasets import XRayPairDataset, collate_pairs
from xrg.errors import CheckpointError, ConfigError, TrainingDiverged
from xrg.eval.generators import load_generator
from xrg.experiments import baseline_config
from xrg.models.baselines import (
    BaselineModel,
    ConditionalDiscriminator,
    ConditioningAugmentation,
    WordAttention,
    compact_words,
    kl_divergence,
)
from xrg.profiles import PROFILE_NAMES, Profile, load_profile
from xrg.train.baselines import (
    BASELINE_METHODS,
    METRIC_KEYS,
    BaselineTrainConfig,
    BaselineTrainer,
    discriminator_loss,
    mismatched_partners,
    training_phases,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny networks gain nothing from a second thread, and lose a lot to it on a shared machine."""
    with torch_threads(1):
        yield


def tiny(method: str, model: dict | None = None, **changes) -> BaselineTrainConfig:
    return replaced(TINY, model={"method": method, **(model or {})}, **changes)


def trainer(config: BaselineTrainConfig, data_dir: Path, run: Path, **kwargs) -> BaselineTrainer:
    return BaselineTrainer(config, data_dir, run, progress=False, **kwargs)


# --------------------------------------------------------------------------------------
# Mechanisms
# --------------------------------------------------------------------------------------


def test_wrong_reports_come_from_other_patients():
    patients = ["a", "a", "b", "c", "c", "d", "e", "f"]
    for seed in range(20):
        rows, partners = mismatched_partners(patients, torch.Generator().manual_seed(seed))
        assert len(rows) >= 1 and len(rows) == len(partners)
        assert all(patients[int(r)] != patients[int(p)] for r, p in zip(rows, partners))  # so never itself
    rows, partners = mismatched_partners(["x", "x", "x"], torch.Generator().manual_seed(0))
    assert rows.numel() == 0 and partners.numel() == 0


def test_the_matching_aware_term_scores_real_images_with_the_wrong_reports():
    torch.manual_seed(0)
    critic = ConditionalDiscriminator(16, cond_dim=6, proj_dim=4, channels=4).eval()
    real, fake, c = torch.rand(4, 1, 16, 16) * 2 - 1, torch.rand(4, 1, 16, 16) * 2 - 1, torch.randn(4, 6)
    rows, partners = torch.tensor([0, 1, 3]), torch.tensor([2, 3, 1])
    with torch.no_grad():
        loss, wrong = discriminator_loss(critic, real, fake, c, rows, partners, mismatch_weight=1.0)
        no_wrong, zero = discriminator_loss(critic, real, fake, c, rows, partners, mismatch_weight=0.0)
        logits = critic(real[rows], c[partners])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros(3))
    torch.testing.assert_close(wrong, expected)
    assert float(zero) == float(wrong) and torch.isclose(loss - no_wrong, 0.5 * wrong)  # GAN-CLS halves it
    _, none = discriminator_loss(critic, real, fake, c, rows[:0], partners[:0], mismatch_weight=1.0)
    assert float(none) == 0.0


def test_conditioning_augmentation_kl_is_non_negative_and_zero_at_the_prior():
    zeros = torch.zeros(3, 5)
    assert float(kl_divergence(zeros, zeros)) == 0.0
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        mu, logvar = torch.randn(3, 5, generator=generator), 3 * torch.randn(3, 5, generator=generator)
        assert float(kl_divergence(mu, logvar)) > 0.0
    ca = ConditioningAugmentation(cond_dim=6, ca_dim=4)
    c = torch.randn(2, 6)
    sample, mu, logvar = ca(c, torch.Generator().manual_seed(1))
    assert sample.shape == mu.shape == logvar.shape == (2, 4)
    assert torch.equal(sample, ca(c, torch.Generator().manual_seed(1))[0])
    assert not torch.equal(sample, ca(c, torch.Generator().manual_seed(2))[0])


def test_word_attention_is_a_softmax_over_the_real_words_only():
    torch.manual_seed(0)
    # Two sections [B, S, W, D]: the words of each report come out in order, padding behind.
    mask_a = torch.tensor([[[True, True, False], [True, False, False]], [[False, False, False], [False, False, False]]])
    mask_b = torch.tensor([[[True, False, False]], [[False, False, False]]])
    states_a, states_b = torch.randn(2, 2, 3, 5) * mask_a[..., None], torch.randn(2, 1, 3, 5) * mask_b[..., None]
    words, mask = compact_words([(states_a, mask_a), (states_b, mask_b)])
    assert mask.tolist() == [[True, True, True, True], [False, False, False, False]]
    assert torch.equal(
        words[0], torch.stack([states_a[0, 0, 0], states_a[0, 0, 1], states_a[0, 1, 0], states_b[0, 0, 0]])
    )

    attention = WordAttention(word_dim=5, channels=3)
    features = torch.randn(3, 3, 4, 4)
    words, mask = torch.randn(3, 6, 5), torch.tensor([[True] * 4 + [False] * 2, [True] + [False] * 5, [False] * 6])
    context, weights = attention(features, words, mask)
    assert context.shape == features.shape and weights.shape == (3, 16, 6)
    torch.testing.assert_close(weights[:2].sum(-1), torch.ones(2, 16))
    assert (weights[:2][~mask[:2, None, :].expand(-1, 16, -1)] == 0).all()
    assert (weights[0, :, :4] > 0).all() and (weights[1, :, 0] == 1).all()
    assert (weights[2] == 0).all() and (context[2] == 0).all()  # a report without words
    changed = words.clone()
    changed[0, 4:] = 100.0  # padding never changes the result
    assert torch.equal(attention(features, changed, mask)[0], context)


# --------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", BASELINE_METHODS)
def test_each_baseline_trains_and_generates_both_views(tmp_path, data_dir, method):
    run = tmp_path / method
    config = tiny(method)
    result = trainer(config, data_dir, run).train()
    assert result.finished and result.step == 2 * 3  # 18 train cases in batches of 6, 2 epochs

    rows = metric_rows(run)
    assert all(set(row) == set(METRIC_KEYS) and row["kind"] == "baseline" and row["method"] == method for row in rows)
    phases = [(p.name, p.stage, p.image_size) for p in training_phases(config)]
    expected = {
        "gan_int_cls": [("gan", 0, 32)],
        "stackgan": [("stage1", 0, 16), ("stage2", 1, 32)],
        "attngan": [("joint", 1, 32)],
    }
    assert phases == expected[method]
    assert [row["step"] for row in rows] == [3, 6]
    assert all(row["seconds"] > 0 and row["images_per_s"] > 0 and row["d_wrong"] > 0 for row in rows)
    assert all((row["kl_loss"] is None) == (method == "gan_int_cls") for row in rows)
    for _name, stage, size in phases:
        assert (run / "samples" / f"stage{stage}_{size}px.png").is_file()
    payload = load_checkpoint(run / "checkpoint.pt", "baseline", config=config)
    assert payload["progress"]["finished"] and payload["progress"]["step"] == 6

    model = load_generator(run)
    assert (model.method, model.image_size, model.max_sentences, model.max_words) == (method, 32, 16, 24)
    test_set = XRayPairDataset(data_dir, "test", image_size=32, vocab=model.vocabulary)
    batch = collate_pairs([test_set[i] for i in range(3)])
    images = model.generate(batch, torch.Generator().manual_seed(0))
    again = model.generate(batch, torch.Generator().manual_seed(0))
    other = model.generate(batch, torch.Generator().manual_seed(1))
    for view in ("frontal", "lateral"):
        assert images[view].shape == (3, 1, 32, 32) and images[view].device.type == "cpu"
        assert 0.0 <= float(images[view].min()) and float(images[view].max()) <= 1.0
        assert torch.equal(images[view], again[view]) and not torch.equal(images[view], other[view])


def test_with_an_l2_term_the_reconstruction_error_falls(tmp_path, data_dir):
    config = tiny("gan_int_cls", rec_weight=100.0, lr=3e-3, num_epochs=6, num_samples=0)
    trainer(config, data_dir, tmp_path / "run").train()
    rec = [row["rec_loss"] for row in metric_rows(tmp_path / "run")]
    assert rec[-1] < 0.7 * rec[0], rec


def test_stackgan_stage_two_leaves_stage_one_and_the_encoder_frozen(tmp_path, data_dir):
    run_trainer = trainer(tiny("stackgan", num_epochs=3), data_dir, tmp_path / "run")
    assert run_trainer.train(max_steps=6).step == 6  # the end of Stage I (2 epochs)
    model = run_trainer.model
    frozen = {f"{prefix}.{k}": v.clone() for prefix, m in (("encoder", model.encoder), ("stage1", model.generator.stage1), ("ca1", model.generator.ca1)) for k, v in m.state_dict().items()}  # fmt: skip
    stage2 = {k: v.clone() for k, v in model.generator.stage2.state_dict().items()}
    assert run_trainer.train().finished
    after = {f"{prefix}.{k}": v for prefix, m in (("encoder", model.encoder), ("stage1", model.generator.stage1), ("ca1", model.generator.ca1)) for k, v in m.state_dict().items()}  # fmt: skip
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())
    assert any(not torch.equal(v, model.generator.stage2.state_dict()[k]) for k, v in stage2.items())


def test_run_directories_checkpoints_and_divergence(tmp_path, data_dir):
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match="nothing to resume"):
        trainer(TINY, data_dir, run, resume=True)
    trainer(TINY, data_dir, run).train(max_steps=1)
    with pytest.raises(CheckpointError, match="already holds a run"):
        trainer(TINY, data_dir, run)
    with pytest.raises(CheckpointError, match=r"model.hidden: 8 → 16; model.method: 'gan_int_cls' → 'attngan'"):
        trainer(tiny("attngan", model={"hidden": 16}), data_dir, run, resume=True)

    # A checkpoint whose weights do not fit its stored config is refused, not half-loaded.
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    payload["model_config"]["gen_channels"] = 16
    torch.save(resealed(payload), tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="does not match its config"):
        BaselineModel.from_checkpoint(tmp_path / "mismatch.pt")

    with pytest.raises(TrainingDiverged) as caught:
        trainer(dataclasses.replace(TINY, rec_weight=float("inf")), data_dir, tmp_path / "diverged").train()
    message = str(caught.value)
    assert (
        "diverged at step 1" in message
        and "non-finite" in message
        and str(tmp_path / "diverged" / "checkpoint.pt") in message
    )
    assert load_checkpoint(tmp_path / "diverged" / "checkpoint.pt", "baseline")["progress"]["step"] == 0


# --------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": {"method": "dcgan"}}, "method must be one of"),
        ({"model": {"method": "stackgan", "base_size": 32}}, "base_size below image_size"),
        ({"model": {"method": "stackgan"}, "num_epochs": 1}, "stackgan needs num_epochs >= 2"),
        ({"model": {"image_size": 48}}, "power of two"),
        ({"batch_size": 1}, "batch_size must be at least 2"),
        ({"stage1_fraction": 1.0}, "stage1_fraction"),
        ({"kl_weight": -1.0}, "kl_weight must be non-negative"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"betas": (0.5, 1.0)}, "betas"),
        ({"model": {"gen_channels": 0}}, "gen_channels must be positive"),
        ({"model": {"encoder_dropout": -0.1}}, "encoder_dropout must be non-negative"),
        ({"model": {"vocab_size": 40}}, "leaves vocab_size unset"),
    ],
)
def test_bad_config_values_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        replaced(TINY, **changes)


def test_profiles_give_per_method_settings():
    profile = Profile(
        name="test", seed=7, data={},
        sections={"baselines": {
            "model": {"image_size": 64, "base_size": 32}, "num_epochs": 4,
            "attngan": {"kl_weight": 1.0, "model": {"hidden": 16}},
        }},
    )  # fmt: skip
    attngan = BaselineTrainConfig.from_profile(profile, "attngan", {"stackgan": {"num_epochs": 6}})
    stackgan = BaselineTrainConfig.from_profile(profile, "stackgan", {"stackgan": {"num_epochs": 6}})
    assert (attngan.seed, attngan.model.image_size, attngan.kl_weight, attngan.num_epochs) == (7, 64, 1.0, 4)
    assert (attngan.model.hidden, attngan.model.base_size, attngan.method) == (16, 32, "attngan")
    assert (stackgan.kl_weight, stackgan.num_epochs, stackgan.model.hidden) == (2.0, 6, 128)
    assert [p.num_epochs for p in training_phases(stackgan)] == [3, 3]
    # Nested and dotted overrides (as --set gives them) reach the model, per method too.
    dotted = BaselineTrainConfig.from_profile(
        profile, "attngan", parse_overrides(["model.ca_dim=16", "attngan.model.hidden=8", "model.base_size=16"])
    )
    assert (dotted.model.ca_dim, dotted.model.hidden, dotted.model.base_size, dotted.model.image_size) == (
        16,
        8,
        16,
        64,
    )
    with pytest.raises(ConfigError, match=r"unknown settings \['baselines.learning_rate'\]"):
        BaselineTrainConfig.from_profile(profile, "gan_int_cls", {"learning_rate": 1.0})
    with pytest.raises(ConfigError, match=r"unknown settings \['baselines.model.width'\]"):
        BaselineTrainConfig.from_profile(profile, "gan_int_cls", parse_overrides(["model.width=3"]))
    with pytest.raises(ConfigError, match=r"\['baselines.hidden'\] \(baselines.hidden is now baselines.model.hidden\)"):
        BaselineTrainConfig.from_profile(profile, "gan_int_cls", {"hidden": 8})
    with pytest.raises(ConfigError, match="baselines.model.method is set by the method trained"):
        BaselineTrainConfig.from_profile(profile, "gan_int_cls", parse_overrides(["model.method=attngan"]))
    with pytest.raises(ConfigError, match="method must be one of"):
        BaselineTrainConfig.from_profile(profile, "pix2pix")
    for name in PROFILE_NAMES:
        for method in BASELINE_METHODS:
            assert baseline_config(load_profile(name), method).method == method


def test_the_training_benchmark_times_every_phase_of_every_baseline():
    from xrg.train.benchmarks import bench_train_baselines

    lines: list[str] = []
    rows = bench_train_baselines("tiny", steps=1, warmup=0, device="cpu", train_cases=40, vocab_size=50,
                                 print_fn=lines.append)  # fmt: skip
    assert [(row["method"], row["phase"]) for row in rows] == [
        ("gan_int_cls", "gan"), ("stackgan", "stage1"), ("stackgan", "stage2"), ("attngan", "joint"),
    ]  # fmt: skip
    assert all(row["images_per_s"] > 0 and row["phase_seconds"] > 0 and row["flops_per_image"] > 0 for row in rows)
    assert "estimated attngan training time for 40 train cases" in lines[-1]
