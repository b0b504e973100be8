"""XRayGAN modules (xrg.models): encoder masking, MSCGAN stages and blend, conditioning, WGAN-GP, VCN;
every runnable model's save / from_checkpoint round trip."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import resealed
from xrg.data.reports import Vocabulary
from xrg.errors import CheckpointError, ConfigError
from xrg.eval.generators import encode_reports
from xrg.models.base import CheckpointedModel
from xrg.models.baselines import BASELINE_METHODS, BaselineModel, BaselineModelConfig
from xrg.models.classifier import FindingClassifier, FindingClassifierConfig
from xrg.models.encoder import (
    AdditiveAttention,
    EncoderConfig,
    FlatEncoder,
    HierarchicalEncoder,
    build_encoder,
    run_bilstm,
)
from xrg.models.vcn import VCNConfig, ViewConsistencyNet, freeze
from xrg.models.xraygan import (
    BasicGenerator,
    MultiScaleGenerator,
    PatchDiscriminator,
    SingleShotGenerator,
    XRayGAN,
    XRayGANConfig,
    XRayGANDiscriminators,
    XRayGANGenerator,
    XRayGANModelConfig,
    gradient_penalty,
    to_image_range,
    to_model_range,
)

VOCAB_SIZE = 40
TINY = XRayGANConfig(
    cond_dim=16, base_size=8, num_stages=3, gen_channels=8, disc_channels=8, cond_channels=4, max_channels=32
)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _section(sentence_lengths: list[int], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One section as ``[S, W]`` ids and mask: random real word ids, PAD (0) after each sentence."""
    width = max(sentence_lengths, default=0)
    ids = torch.zeros(len(sentence_lengths), width, dtype=torch.long)
    for row, length in enumerate(sentence_lengths):
        ids[row, :length] = torch.randint(2, VOCAB_SIZE, (length,), generator=generator)
    return ids, ids != 0


def _pad(sections: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack sections into ``[B, S, W]`` padded to the largest, at least ``[B, 1, 1]``."""
    num_sentences = max(1, *(ids.shape[0] for ids, _ in sections))
    num_words = max(1, *(ids.shape[1] for ids, _ in sections))
    ids = torch.zeros(len(sections), num_sentences, num_words, dtype=torch.long)
    for b, (section_ids, _) in enumerate(sections):
        ids[b, : section_ids.shape[0], : section_ids.shape[1]] = section_ids
    return ids, ids != 0


def _reports(shapes: list[tuple[list[int], list[int]]], seed: int = 0) -> list[tuple[tuple, tuple]]:
    generator = torch.Generator().manual_seed(seed)
    return [(_section(findings, generator), _section(impression, generator)) for findings, impression in shapes]


def _batch(reports: list[tuple[tuple, tuple]]) -> tuple[torch.Tensor, ...]:
    findings_ids, findings_mask = _pad([findings for findings, _ in reports])
    impression_ids, impression_mask = _pad([impression for _, impression in reports])
    return findings_ids, findings_mask, impression_ids, impression_mask


def _encoder(kind: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=VOCAB_SIZE, embed_dim=12, hidden=8, kind=kind, **overrides)
    return build_encoder(config).eval()


# --------------------------------------------------------------------------------------
# Encoders (§2.1)
# --------------------------------------------------------------------------------------


def test_attention_weights_cover_real_positions_only_and_empty_rows_give_zero():
    torch.manual_seed(0)
    attention = AdditiveAttention(6, 5)
    states = torch.randn(2, 3, 7, 6, requires_grad=True)
    mask = torch.rand(2, 3, 7) > 0.4
    mask[0, 1] = False  # an empty row
    mask[1, 2] = True
    context, weights = attention(states, mask)
    assert context.shape == (2, 3, 6) and weights.shape == (2, 3, 7)
    assert (weights[~mask] == 0).all()
    has_words = mask.any(-1)
    torch.testing.assert_close(weights.sum(-1)[has_words], torch.ones(int(has_words.sum())))
    assert (weights[0, 1] == 0).all() and (context[0, 1] == 0).all()
    context.sum().backward()
    assert torch.isfinite(states.grad).all()


def test_run_bilstm_ignores_where_the_padding_sits():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, batch_first=True, bidirectional=True)
    words = torch.randn(3, 3)
    inputs = torch.zeros(2, 5, 3)
    inputs[0, [0, 1, 2]] = words
    inputs[1, [0, 2, 4]] = words
    inputs[1, [1, 3]] = 9.0  # garbage under the mask
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 0, 1]], dtype=torch.bool)
    states, final = run_bilstm(lstm, inputs, mask)
    torch.testing.assert_close(states[1, [0, 2, 4]], states[0, [0, 1, 2]])
    torch.testing.assert_close(final[1], final[0])
    assert (states[~mask] == 0).all()


ALONE = ([3, 5], [4])
LONGER = ([9, 2, 7, 4], [6, 6])


@pytest.mark.parametrize("kind, pooling", [("hierarchical", "mean"), ("flat", "mean"), ("flat", "last")])
def test_padding_in_a_batch_does_not_change_the_encoding(kind, pooling):
    encoder = _encoder(kind, flat_pooling=pooling)
    report, longer, other = _reports([ALONE, LONGER, ([2], [1, 3, 8])])
    with torch.no_grad():
        alone = encoder(*_batch([report]))
        batched = encoder(*_batch([longer, report, other]))
    assert batched.c.shape == (3, 4 * 8)
    torch.testing.assert_close(batched.c[1], alone.c[0], atol=1e-5, rtol=0)
    if kind == "hierarchical":
        words = batched.findings.word_weights[1]
        torch.testing.assert_close(words[:2, :5], alone.findings.word_weights[0], atol=1e-5, rtol=0)
        assert (words[2:] == 0).all() and (words[:, 5:] == 0).all()
        torch.testing.assert_close(batched.findings.sentence_weights[1, :2].sum(), torch.tensor(1.0))


def test_attention_weights_sum_to_one_over_real_words():
    encoder = _encoder("hierarchical")
    batch = _batch(_reports([ALONE, LONGER]))
    with torch.no_grad():
        findings = encoder(*batch).findings
    mask = batch[1]
    assert (findings.word_weights[~mask] == 0).all()
    sentences = mask.any(-1)
    torch.testing.assert_close(findings.word_weights.sum(-1)[sentences], torch.ones(int(sentences.sum())))
    assert (findings.sentence_weights[~sentences] == 0).all()
    torch.testing.assert_close(findings.sentence_weights.sum(-1), torch.ones(2))


@pytest.mark.parametrize("kind", ["hierarchical", "flat"])
def test_an_empty_section_encodes_to_a_finite_zero_vector(kind):
    encoder = _encoder(kind)
    findings_ids, findings_mask, _, _ = _batch(_reports([ALONE, LONGER]))
    empty_ids, empty_mask = torch.zeros(2, 1, 1, dtype=torch.long), torch.zeros(2, 1, 1, dtype=torch.bool)
    encoding = encoder(findings_ids, findings_mask, empty_ids, empty_mask)
    assert torch.isfinite(encoding.c).all()
    if kind == "hierarchical":
        assert (encoding.impression.vector == 0).all() and (encoding.findings.vector != 0).any()
    nothing = encoder(empty_ids, empty_mask, empty_ids, empty_mask)
    assert (nothing.c == 0).all()
    encoding.c.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


def test_encoder_sizes_and_shared_embedding():
    config = EncoderConfig(vocab_size=VOCAB_SIZE)
    assert config.cond_dim == 512
    shared = HierarchicalEncoder(config)
    assert shared.findings.embedding is shared.impression.embedding
    separate = HierarchicalEncoder(dataclasses.replace(config, share_embedding=False))
    assert separate.findings.embedding is not separate.impression.embedding
    assert isinstance(build_encoder(dataclasses.replace(config, kind="flat")), FlatEncoder)
    with torch.no_grad():
        for encoder in (shared, FlatEncoder(config)):
            assert encoder(*_batch(_reports([ALONE]))).c.shape == (1, 512)


@pytest.mark.parametrize(
    "field, value", [("vocab_size", 2), ("hidden", 0), ("dropout", 1.0), ("kind", "tree"), ("flat_pooling", "max")]
)
def test_encoder_config_is_validated(field, value):
    with pytest.raises(ConfigError, match=field):
        EncoderConfig(**{"vocab_size": VOCAB_SIZE, field: value})


# --------------------------------------------------------------------------------------
# MSCGAN (§2.2)
# --------------------------------------------------------------------------------------


def _tiny_generator(config: XRayGANConfig = TINY) -> MultiScaleGenerator:
    torch.manual_seed(0)
    return MultiScaleGenerator(config).eval()


def test_generator_stage_shapes_and_range():
    generator = XRayGANGenerator(TINY).eval()
    with torch.no_grad():
        images = generator(torch.randn(2, 16))
        first = generator(torch.randn(2, 16), upto_stage=0)
    assert set(images) == {"frontal", "lateral"}
    assert [tuple(x.shape) for x in images["frontal"]] == [(2, 1, 8, 8), (2, 1, 16, 16), (2, 1, 32, 32)]
    assert all(x.abs().max() <= 1 for x in images["lateral"])
    assert [x.shape[-1] for x in first["frontal"]] == [8]
    assert not torch.equal(images["frontal"][0], images["lateral"][0]), "views have separate weights"
    with pytest.raises(ConfigError, match="upto_stage"):
        generator(torch.randn(2, 16), upto_stage=3)


def test_paper_config_cascade_shapes():
    config = XRayGANConfig()
    assert config.stage_sizes == (32, 64, 128, 256)
    with torch.no_grad():
        images = MultiScaleGenerator(config).eval()(torch.randn(1, 512))
    assert [tuple(x.shape) for x in images] == [(1, 1, 32, 32), (1, 1, 64, 64), (1, 1, 128, 128), (1, 1, 256, 256)]


def test_each_stage_blends_half_generated_half_upsampled():
    generator = _tiny_generator()
    raw: list[torch.Tensor] = []
    for stage in generator.progressive:
        stage.register_forward_hook(lambda module, inputs, output: raw.append(output))
    with torch.no_grad():
        images = generator(torch.randn(3, 16))
    for n in (1, 2):
        upsampled = F.interpolate(images[n - 1], scale_factor=2, mode="bilinear", align_corners=False)
        torch.testing.assert_close(images[n] - 0.5 * upsampled, 0.5 * raw[n - 1])


def test_conditioning_changes_every_stage():
    generator = _tiny_generator()
    c = torch.randn(2, 16)
    with torch.no_grad():
        first, second = generator(c), generator(c + torch.randn(2, 16))
        previous = torch.rand(2, 1, 8, 8) * 2 - 1
        progressive = generator.progressive[0]
        direct = progressive(previous, c), progressive(previous, -c)
    for a, b in zip(first, second):
        assert (a - b).abs().max() > 1e-4
    assert (direct[0] - direct[1]).abs().max() > 1e-4


def test_noise_input_when_configured():
    config = dataclasses.replace(TINY, noise_dim=3)
    generator = _tiny_generator(config)
    c, noise = torch.randn(2, 16), torch.randn(2, 3)
    with torch.no_grad():
        same = generator(c, noise)[-1], generator(c, noise)[-1]
        other = generator(c, torch.randn(2, 3))[-1]
    torch.testing.assert_close(same[0], same[1])
    assert (same[0] - other).abs().max() > 1e-4


def test_single_shot_generator_matches_the_cascade_in_size():
    for config in (XRayGANConfig(), TINY):
        single, cascade = SingleShotGenerator(config), MultiScaleGenerator(config)
        assert 0.75 <= _count(single) / _count(cascade) <= 1.25, config
    with torch.no_grad():
        assert SingleShotGenerator(TINY).eval()(torch.randn(2, 16)).shape == (2, 1, 32, 32)


def test_discriminators_are_conditional_patch_critics():
    torch.manual_seed(0)
    discriminators = XRayGANDiscriminators(TINY)
    assert set(discriminators) == {"frontal", "lateral"} and len(discriminators["frontal"]) == 3
    for stage, size in enumerate(TINY.stage_sizes):
        critic = discriminators["lateral"][stage]
        image = torch.rand(2, 1, size, size) * 2 - 1
        c = torch.randn(2, 16, requires_grad=True)
        scores = critic(image, c)
        assert scores.shape == (2, 1, critic.output_size, critic.output_size)
        with torch.no_grad():
            assert (critic(image, c + torch.randn(2, 16)) - scores).abs().max() > 1e-4
        (grad,) = torch.autograd.grad(scores.sum(), c)
        assert grad.abs().sum() > 0
    assert [PatchDiscriminator(s, 512).output_size for s in (32, 64, 128, 256)] == [8, 8, 8, 16]


class _LinearCritic(nn.Module):
    """``D(x) = <w, x>`` with a fixed weight of the given norm over the image."""

    def __init__(self, size: int, norm: float) -> None:
        super().__init__()
        weight = torch.randn(1, size, size)
        self.weight = nn.Parameter(weight * norm / weight.norm())

    def forward(self, image: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return (image * self.weight).sum(dim=(1, 2, 3)).reshape(-1, 1, 1, 1) + c.sum(dim=1).reshape(-1, 1, 1, 1)


def test_gradient_penalty_of_linear_critics():
    torch.manual_seed(0)
    real, fake, c = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8), torch.randn(4, 3)
    assert gradient_penalty(_LinearCritic(8, 1.0), real, fake, c).item() < 1e-10
    torch.testing.assert_close(gradient_penalty(_LinearCritic(8, 3.0), real, fake, c), torch.tensor(4.0))


def test_gradient_penalty_trains_the_critic():
    torch.manual_seed(0)
    critic = PatchDiscriminator(16, 16, channels=8, cond_channels=4)
    fake = torch.rand(3, 1, 16, 16, requires_grad=True)
    penalty = gradient_penalty(critic, torch.rand(3, 1, 16, 16), fake, torch.randn(3, 16))
    assert penalty.ndim == 0 and torch.isfinite(penalty)
    penalty.backward()
    output_bias = critic.joint[-1].bias  # shifts every score alike, so it has no gradient in x
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in critic.parameters() if p is not output_bias)
    assert fake.grad is None, "the interpolates are detached from the generator"


def test_range_conversions_round_trip():
    image = torch.rand(2, 1, 4, 4)
    model = to_model_range(image)
    assert model.min() >= -1 and model.max() <= 1
    torch.testing.assert_close(to_image_range(model), image)


@pytest.mark.parametrize(
    "field, value",
    [
        ("base_size", 12),
        ("base_size", 4),
        ("num_stages", 0),
        ("num_stages", 9),
        ("alpha", 0.0),
        ("noise_dim", -1),
        ("gen_channels", 0),
        ("views", ("frontal", "frontal")),
    ],
)
def test_gan_config_is_validated(field, value):
    with pytest.raises(ConfigError):
        XRayGANConfig(**{field: value})


# --------------------------------------------------------------------------------------
# VCN (§2.3)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
def test_vcn_shapes(size):
    torch.manual_seed(0)
    vcn = ViewConsistencyNet().eval()
    frontal, lateral = torch.rand(2, 1, size, size), torch.rand(2, 1, size, size)
    with torch.no_grad():
        embedding = vcn.embed(frontal)
        probability = vcn.prob(frontal, lateral)
    assert embedding.shape == (2, 128)
    torch.testing.assert_close(embedding.norm(dim=1), torch.full((2,), 10.0))
    assert vcn(frontal, lateral).shape == probability.shape == (2,)
    assert ((probability > 0) & (probability < 1)).all()


def test_frozen_vcn_stays_frozen_and_passes_gradients_to_images():
    class Trainer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.generator = BasicGenerator(16, out_size=32, channels=4)
            self.vcn = freeze(ViewConsistencyNet())

    trainer = Trainer().train()
    assert not trainer.vcn.training and trainer.generator.training
    assert all(not m.training for m in trainer.vcn.modules())
    assert not any(p.requires_grad for p in trainer.vcn.parameters())
    images = trainer.generator(torch.randn(2, 16))
    trainer.vcn.prob(images, images.flip(-1)).sum().backward()
    assert all(p.grad is not None for p in trainer.generator.parameters())
    assert all(p.grad is None for p in trainer.vcn.parameters())


# --------------------------------------------------------------------------------------
# Together
# --------------------------------------------------------------------------------------


def _encoder_and_generator(seed: int) -> tuple[HierarchicalEncoder, BasicGenerator]:
    torch.manual_seed(seed)
    encoder = HierarchicalEncoder(EncoderConfig(vocab_size=VOCAB_SIZE, embed_dim=16, hidden=16))
    return encoder, BasicGenerator(64, out_size=16, channels=16, max_channels=64)


def test_same_seed_same_weights_and_outputs():
    batch = _batch(_reports([ALONE, LONGER]))
    outputs = []
    for _ in range(2):
        encoder, generator = _encoder_and_generator(seed=3)
        with torch.no_grad():
            outputs.append((generator.eval()(encoder.eval()(*batch).c), encoder.state_dict(), generator.state_dict()))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], atol=0, rtol=0)
    for first, second in ((outputs[0][1], outputs[1][1]), (outputs[0][2], outputs[1][2])):
        assert all(torch.equal(first[k], second[k]) for k in first)


def test_encoder_and_basic_generator_overfit_four_pairs():
    encoder, generator = _encoder_and_generator(seed=0)
    batch = _batch(_reports([ALONE, LONGER, ([2, 6], [3]), ([4], [5, 2])], seed=1))
    targets = to_model_range(torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(2)))
    optimizer = torch.optim.Adam([*encoder.parameters(), *generator.parameters()], lr=2e-3)
    losses = []
    for _ in range(100):
        loss = F.mse_loss(generator(encoder(*batch).c), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


# --------------------------------------------------------------------------------------
# Models own their config and checkpoint
# --------------------------------------------------------------------------------------

WORDS = Vocabulary.build(["The heart is enlarged. The lungs are clear. No effusion.", "Small right pleural effusion."])
REPORTS = ["FINDINGS: The heart is enlarged. IMPRESSION: No effusion.", "FINDINGS: Small right pleural effusion."]
XRAYGAN_MODEL = dict(
    embed_dim=8, hidden=8, base_size=16, num_stages=2, gen_channels=8, disc_channels=8, cond_channels=4, max_channels=32,
    disc_max_downsamplings=2, noise_dim=2,
)  # fmt: skip
BASELINE_MODEL = dict(
    embed_dim=8, hidden=8, image_size=32, base_size=16, noise_dim=8, ca_dim=8, gen_channels=8, disc_channels=8,
    max_channels=32,
)  # fmt: skip


@dataclasses.dataclass
class RunConfig:
    """A stand-in run config: the checkpoint stores it beside the model config, the model never reads it."""

    seed: int = 0
    lr: float = 1e-3
    note: str = ""


def _runnable(name: str) -> CheckpointedModel:
    torch.manual_seed(0)
    if name.startswith("xraygan"):
        ablation = {
            "xraygan": {},
            "xraygan_no_mscgan_no_hae": {"generator_kind": "single_shot", "encoder_kind": "flat"},
        }
        return XRayGAN(XRayGANModelConfig(vocab_size=len(WORDS), **XRAYGAN_MODEL, **ablation[name]))
    if name in BASELINE_METHODS:
        return BaselineModel(BaselineModelConfig(vocab_size=len(WORDS), method=name, **BASELINE_MODEL))
    if name == "vcn":
        return ViewConsistencyNet(VCNConfig(embed_dim=16, scale=5.0))
    return FindingClassifier(FindingClassifierConfig())


@torch.no_grad()
def _outputs(model: CheckpointedModel) -> list[torch.Tensor]:
    """What the model computes in eval mode on fixed inputs (its generators' images, or its scores)."""
    model.eval()
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    if isinstance(model, XRayGAN):
        noise = torch.randn(2, model.config.noise_dim, generator=torch.Generator().manual_seed(2))
        fake = model.generate(
            model.encode(encode_reports(REPORTS, WORDS, 16, 24)).c, model.config.num_stages - 1, noise
        )
        return [fake["frontal"], fake["lateral"]]
    if isinstance(model, BaselineModel):
        condition = model.encode(encode_reports(REPORTS, WORDS, 16, 24))
        fake = model.generator(condition, torch.Generator().manual_seed(2)).images[-1]
        return [fake["frontal"], fake["lateral"]]
    if isinstance(model, ViewConsistencyNet):
        return [model(to_model_range(images), to_model_range(images.flip(0)))]
    return [model(images)]


@pytest.mark.parametrize("name", ["xraygan", "xraygan_no_mscgan_no_hae", *BASELINE_METHODS, "vcn", "classifier"])
def test_a_saved_model_loads_back_from_its_model_config_with_identical_outputs(tmp_path, name):
    model = _runnable(name)
    path = model.save(tmp_path / "model.pt", run_config=RunConfig(note=name), vocabulary=WORDS, metrics={"score": 1.0},
                      progress={"step": 3, "finished": True})  # fmt: skip
    loaded = type(model).from_checkpoint(path)
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    for before, after in zip(_outputs(model), _outputs(loaded)):
        torch.testing.assert_close(after, before, atol=0, rtol=0)
    info = loaded.checkpoint_info
    assert info.path == path and info.vocabulary.fingerprint == WORDS.fingerprint and info.finished
    assert info.run_config == {"seed": 0, "lr": 1e-3, "note": name} and info.metrics == {"score": 1.0}
    payload = torch.load(path, weights_only=True)  # the model config and the run config are stored apart
    assert payload["model_config"] == dataclasses.asdict(model.config) and "lr" not in payload["model_config"]
    assert payload["config"] == {"seed": 0, "lr": 1e-3, "note": name}


def test_a_loaded_generator_has_no_discriminators_and_weights_that_do_not_fit_are_refused(tmp_path):
    model = _runnable("xraygan")
    path = model.save(tmp_path / "model.pt", run_config=RunConfig(), vocabulary=WORDS)
    loaded = XRayGAN.from_checkpoint(path)
    assert not hasattr(loaded, "discriminators") and hasattr(model, "discriminators")
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["gen_channels"] = 16
    torch.save(resealed(payload), tmp_path / "wider.pt")
    with pytest.raises(CheckpointError, match="does not match the model its config describes"):
        XRayGAN.from_checkpoint(tmp_path / "wider.pt")
    payload["model_config"]["gen_channels"], payload["model_config"]["vocab_size"] = 8, len(WORDS) + 1
    torch.save(resealed(payload), tmp_path / "other-words.pt")
    with pytest.raises(
        CheckpointError, match=f"its vocabulary has {len(WORDS)} words, the model reads {len(WORDS) + 1}"
    ):
        XRayGAN.from_checkpoint(tmp_path / "other-words.pt")
    with pytest.raises(CheckpointError, match="is a 'xraygan' checkpoint, expected 'vcn'"):
        ViewConsistencyNet.from_checkpoint(path)


def test_a_stopped_training_state_is_not_loaded_as_a_trained_vcn_or_classifier(tmp_path):
    for name in ("vcn", "classifier"):
        model = _runnable(name)
        path = model.save(tmp_path / f"{name}.pt", run_config=RunConfig(), vocabulary=WORDS,
                          progress={"step": 1, "finished": False})  # fmt: skip
        with pytest.raises(CheckpointError, match="holds a training stopped at step 1, not a trained model"):
            type(model).from_checkpoint(path)


def test_the_vcn_score_is_one_method():
    vcn = ViewConsistencyNet(VCNConfig(embed_dim=16)).eval()
    frontal, lateral = (torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    with torch.no_grad():
        e_f, e_l = vcn.embed(frontal), vcn.embed(lateral)
        by_hand = torch.sigmoid(vcn.head((e_f - e_l).abs())).squeeze(-1)
        torch.testing.assert_close(vcn.pair_probability(e_f, e_l), by_hand, atol=0, rtol=0)
        torch.testing.assert_close(vcn.prob(frontal, lateral), by_hand, atol=0, rtol=0)


@pytest.mark.parametrize("share, pooling", [(True, "mean"), (False, "last")])
def test_the_encoder_settings_of_a_model_config_reach_its_encoder(share, pooling):
    hierarchical = XRayGAN(XRayGANModelConfig(vocab_size=len(WORDS), **XRAYGAN_MODEL, share_embedding=share))
    assert hierarchical.encoder.config.share_embedding is share
    assert (hierarchical.encoder.findings.embedding is hierarchical.encoder.impression.embedding) is share
    flat = XRayGAN(
        XRayGANModelConfig(vocab_size=len(WORDS), **XRAYGAN_MODEL, encoder_kind="flat", flat_pooling=pooling)
    )
    assert isinstance(flat.encoder, FlatEncoder) and flat.encoder.config.flat_pooling == pooling
    baseline = BaselineModel(BaselineModelConfig(vocab_size=len(WORDS), **BASELINE_MODEL, share_embedding=share))
    assert (baseline.encoder.findings.embedding is baseline.encoder.impression.embedding) is share
    # The defaults are the encoder's own (today's behaviour): one shared embedding, mean pooling.
    assert XRayGANModelConfig().share_embedding is EncoderConfig(vocab_size=3).share_embedding is True
    assert XRayGANModelConfig().flat_pooling == EncoderConfig(vocab_size=3).flat_pooling == "mean"
    assert BaselineModelConfig().share_embedding is True


def test_a_model_config_without_a_vocabulary_size_builds_no_encoder():
    unset = XRayGANModelConfig(**XRAYGAN_MODEL)
    assert unset.vocab_size == 0
    with pytest.raises(ConfigError, match="vocab_size is unset"):
        unset.encoder_config()
    assert unset.with_vocabulary(len(WORDS)).encoder_config().vocab_size == len(WORDS)
    with pytest.raises(ConfigError, match="vocab_size is unset"):
        BaselineModelConfig(**BASELINE_MODEL).encoder_config()
    with pytest.raises(ConfigError, match="flat_pooling"):
        XRayGANModelConfig(**XRAYGAN_MODEL, flat_pooling="max")
    with pytest.raises(ConfigError, match="vocab_size must be 0"):
        XRayGANModelConfig(vocab_size=2)
