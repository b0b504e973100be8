"""DiffuseVAE + MoCo: the noise schedule and samplers, guidance, MoCo's momentum encoder, queue and
clustering loss, the stages' training and refusals, and sampling from a trained run.

The bit-exact resume of every stage is in tests/test_resume.py with every other trainer's.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from helpers import DIFFUSEVAE_TINY, metric_rows, torch_threads
from xrg.cli import main
from xrg.data.findings import FINDING_KINDS
from xrg.errors import CheckpointError, ConfigError
from xrg.models.diffusevae import (
    VAE,
    ConditionConfig,
    DiffuseVAE,
    NoiseSchedule,
    UNet,
    UNetConfig,
    VAEConfig,
    elbo_terms,
    finding_labels,
    guided_eps,
    make_betas,
    parse_condition,
    sample_ancestral,
    sample_ddim,
)
from xrg.models.moco import CLUSTER_CATEGORIES, MoCo, MoCoConfig, augment, cluster_loss, finding_category, info_nce
from xrg.pipelines import DiffuseVAEPipeline
from xrg.train.diffusevae import DiffuseVAETrainConfig, DiffuseVAETrainer, stage_checkpoint

UNET = UNetConfig(image_size=16, base_channels=8, channel_mults=(1, 2), timesteps=10,
                  condition=ConditionConfig(mode="findings", cond_dim=8))  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def labels_of(*kinds: str, count: int = 1) -> dict[str, torch.Tensor]:
    return {"labels": finding_labels(kinds).expand(count, -1).clone()}


# ---- the schedule ----------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("timesteps", [1000, 50])
def test_alpha_bar_falls_monotonically_from_near_1_towards_0(schedule, timesteps):
    noise = NoiseSchedule(schedule, timesteps)
    alpha_bar = noise.alpha_bar
    assert alpha_bar.shape == (timesteps,)
    assert bool((alpha_bar[1:] < alpha_bar[:-1]).all())
    assert 0.95 < float(alpha_bar[0]) < 1 and 0 <= float(alpha_bar[-1]) < 0.05
    assert bool((noise.posterior_variance[1:] > 0).all()) and float(noise.posterior_variance[0]) == 0


def test_the_linear_schedule_is_ho_et_al_s_at_1000_steps():
    betas = make_betas("linear", 1000)
    assert float(betas[0]) == pytest.approx(1e-4) and float(betas[-1]) == pytest.approx(0.02)
    with pytest.raises(ConfigError, match="schedule must be one of"):
        make_betas("quadratic", 10)


def test_q_sample_has_the_forward_process_mean_and_variance():
    schedule = NoiseSchedule("cosine", 100)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.full((20_000, 1, 1, 1), 0.6)
    for step in (0, 30, 99):
        t = torch.full((x0.shape[0],), step)
        x_t = schedule.q_sample(x0, t, torch.randn(x0.shape, generator=generator))
        alpha_bar = float(schedule.alpha_bar[step])
        assert float(x_t.mean()) == pytest.approx(math.sqrt(alpha_bar) * 0.6, abs=0.02)
        assert float(x_t.var()) == pytest.approx(1 - alpha_bar, rel=0.05, abs=1e-4)


def test_predict_x0_inverts_q_sample_and_the_posterior_mean_is_its_closed_form():
    schedule = NoiseSchedule("linear", 50)
    x0, noise = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 10, 25, 49])
    x_t = schedule.q_sample(x0, t, noise)
    assert torch.allclose(schedule.predict_x0(x_t, t, noise), x0, atol=1e-4)
    mean = schedule.posterior_mean(x0, x_t, t)
    for row, step in enumerate(t.tolist()):
        ab, ab_prev, beta = (float(v[step]) for v in (schedule.alpha_bar, schedule.alpha_bar_prev, schedule.betas))
        expected = (math.sqrt(ab_prev) * beta * x0[row] + math.sqrt(1 - beta) * (1 - ab_prev) * x_t[row]) / (1 - ab)
        assert torch.allclose(mean[row], expected, atol=1e-5)


def test_ddim_timesteps_are_spread_from_the_last_to_the_first():
    schedule = NoiseSchedule("linear", 100)
    assert schedule.ddim_timesteps(100) == list(range(99, -1, -1))
    steps = schedule.ddim_timesteps(5)
    assert steps[0] == 99 and steps[-1] == 0 and len(steps) == 5
    with pytest.raises(ConfigError, match="steps must be between 1 and the schedule's 100"):
        schedule.ddim_timesteps(101)


# ---- the UNet, guidance and the samplers -----------------------------------------------------


def test_the_unet_predicts_noise_of_the_image_shape():
    torch.manual_seed(0)
    unet = UNet(UNET)
    x = torch.randn(3, 1, 16, 16)
    c = unet.condition(labels_of("cardiomegaly", count=3), 3)
    assert unet(x, torch.tensor([0, 4, 9]), x, c).shape == (3, 1, 16, 16)


def test_classifier_free_guidance_at_scale_0_is_the_unconditional_prediction_and_at_1_the_conditional():
    torch.manual_seed(0)
    unet = UNet(UNET).eval()
    with torch.no_grad():
        unet.condition.null.normal_()  # a trained null vector differs from every condition
        x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 7])
        c = unet.condition(labels_of("pleural_effusion", count=2), 2)
        null = unet.condition.null.expand(2, -1)
        conditional, unconditional = unet(x, t, x, c), unet(x, t, x, null)
        assert not torch.allclose(conditional, unconditional)
        assert torch.allclose(guided_eps(unet, x, t, x, c, 0.0), unconditional, atol=1e-6)
        assert torch.allclose(guided_eps(unet, x, t, x, c, 1.0), conditional, atol=1e-6)
        guided = guided_eps(unet, x, t, x, c, 3.0)
        assert torch.allclose(guided, unconditional + 3.0 * (conditional - unconditional), atol=1e-5)


def test_the_condition_dropout_replaces_a_case_by_the_null_vector():
    torch.manual_seed(0)
    unet = UNet(UNET)
    c = unet.condition(labels_of("opacity", count=3), 3, drop=torch.tensor([True, False, True]))
    assert torch.equal(c[0], unet.condition.null) and torch.equal(c[2], unet.condition.null)
    assert not torch.equal(c[1], unet.condition.null)


def test_ddim_with_every_timestep_and_eta_1_is_ancestral_sampling():
    torch.manual_seed(0)
    unet = UNet(UNET).eval()
    schedule = UNET.noise_schedule()
    x_vae = torch.rand(64, 1, 16, 16) * 2 - 1
    c = unet.condition(labels_of("cardiomegaly", count=64), 64)

    def draw(sampler, seed, **options):
        return sampler(unet, schedule, x_vae, c, generator=torch.Generator().manual_seed(seed), **options)

    # the same noise draws in the same order: the same samples
    ancestral = draw(sample_ancestral, 1)
    ddim = draw(sample_ddim, 1, steps=schedule.timesteps, eta=1.0)
    assert torch.allclose(ancestral, ddim, atol=1e-4)
    # and in distribution over other draws: the per-pixel means of 64 samples each differ by what
    # chance gives (|z| averages √(2/π) ≈ 0.8 for one distribution), and the spreads agree
    other = draw(sample_ddim, 2, steps=schedule.timesteps, eta=1.0)
    standard_error = ((other.var(0) + ancestral.var(0)) / 64).sqrt().clamp(min=1e-6)
    z = (other.mean(0) - ancestral.mean(0)) / standard_error
    assert float(z.abs().mean()) < 1.1
    assert float(other.std(0).mean()) == pytest.approx(float(ancestral.std(0).mean()), rel=0.15)
    assert float(((other.mean(0) + 0.3 - ancestral.mean(0)) / standard_error).abs().mean()) > 1.5  # it sees a shift
    # η = 0 is deterministic given x_T and differs from the stochastic sampler
    deterministic = draw(sample_ddim, 1, steps=schedule.timesteps, eta=0.0)
    assert torch.equal(deterministic, draw(sample_ddim, 1, steps=schedule.timesteps, eta=0.0))
    assert not torch.allclose(deterministic, ancestral, atol=1e-3)


def test_the_ddpm_loss_falls_on_a_tiny_problem():
    """Two images (a bright disc, a dark band) under their two conditions: ε-prediction learns them."""
    torch.manual_seed(0)
    config = dataclasses.replace(UNET, timesteps=50)
    unet, schedule = UNet(config), config.noise_schedule()
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    disc = torch.where(xx**2 + yy**2 < 0.4, 0.8, -0.8)
    band = torch.where(xx.abs() < 0.3, -0.2, -0.9)
    x0 = torch.stack([disc, band] * 8).unsqueeze(1)
    batch = {"labels": torch.stack([finding_labels(("cardiomegaly",)), finding_labels(())] * 8)}
    fixed = torch.Generator().manual_seed(1)
    t_eval = torch.randint(0, 50, (64,), generator=fixed)
    noise_eval = torch.randn((64, 1, 16, 16), generator=fixed)
    x0_eval, batch_eval = x0.repeat(4, 1, 1, 1), {"labels": batch["labels"].repeat(4, 1)}

    def loss(t, noise, images, conditions):
        x_t = schedule.q_sample(images, t, noise)
        return torch.nn.functional.mse_loss(
            unet(x_t, t, torch.zeros_like(images), unet.condition(conditions, len(t))), noise
        )

    with torch.no_grad():
        before = float(loss(t_eval, noise_eval, x0_eval, batch_eval))
    optimizer = torch.optim.Adam(unet.parameters(), lr=2e-3)
    for _ in range(150):
        t = torch.randint(0, 50, (16,))
        value = loss(t, torch.randn_like(x0), x0, batch)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(loss(t_eval, noise_eval, x0_eval, batch_eval))
    assert before > 0.9 and after < 0.5 * before


# ---- the VAE -----------------------------------------------------------------------------------


def test_the_vae_reconstructs_and_samples_images_of_its_size_and_its_elbo_falls():
    torch.manual_seed(0)
    config = VAEConfig(image_size=16, base_channels=4, max_channels=16, latent_dim=4,
                       condition=ConditionConfig(mode="findings", cond_dim=4))  # fmt: skip
    vae = VAE(config)
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    c = vae.condition(labels_of(count=8), 8)
    assert vae.reconstruct(x, c).shape == x.shape and vae.sample(c).shape == x.shape
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        reconstruction, kl = elbo_terms(x, vae(x, vae.condition(labels_of(count=8), 8)))
        loss = reconstruction + kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0]
    with pytest.raises(ConfigError, match="power of two"):
        VAEConfig(image_size=24)


# ---- MoCo ---------------------------------------------------------------------------------------


MOCO = MoCoConfig(image_size=16, width=4, feature_dim=8, queue_size=10, momentum=0.9)


def test_the_key_encoder_is_a_moving_average_of_the_query_encoder():
    torch.manual_seed(0)
    moco = MoCo(MOCO)
    keys_before = {n: p.clone() for n, p in moco.key_encoder.named_parameters()}
    assert all(torch.equal(p, keys_before[n]) for n, p in moco.query_encoder.named_parameters())  # starts as a copy
    with torch.no_grad():
        for p in moco.query_encoder.parameters():
            p.add_(torch.randn_like(p))
    queries = {n: p.clone() for n, p in moco.query_encoder.named_parameters()}
    moco.momentum_update()
    for name, key in moco.key_encoder.named_parameters():
        assert torch.allclose(key, 0.9 * keys_before[name] + 0.1 * queries[name], atol=1e-6), name
        assert not key.requires_grad


def test_the_queue_is_first_in_first_out_of_its_size():
    moco = MoCo(MOCO)
    batches = [torch.nn.functional.normalize(torch.randn(4, 8), dim=1) for _ in range(3)]
    for i, keys in enumerate(batches):
        moco.enqueue(keys, torch.full((4,), i))
    assert moco.queue.shape == (8, 10) and int(moco.queue_pointer) == 12 % 10
    # slots 0-1 hold the last two keys of batch 2 (wrapped), 2-5 batch 1, 6-9 batch 2's first ... in arrival order
    arrived = torch.cat(batches)  # 12 keys; the queue keeps the last 10, slot = arrival index mod 10
    for index in range(2, 12):
        assert torch.equal(moco.queue[:, index % 10], arrived[index])
    assert moco.queue_categories.tolist() == [2, 2, 0, 0, 1, 1, 1, 1, 2, 2]


def test_info_nce_is_low_when_the_positive_is_the_nearest():
    q = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    queue = torch.nn.functional.normalize(torch.randn(8, 20), dim=0)
    assert float(info_nce(q, q, queue, 0.1)) < float(info_nce(q, -q, queue, 0.1))


def test_the_clustering_loss_is_lower_for_a_clustered_than_for_a_shuffled_embedding():
    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 16, generator=generator), dim=1)
    categories = torch.arange(4).repeat_interleave(10)
    clustered = torch.nn.functional.normalize(
        centres[categories] + 0.2 * torch.randn(40, 16, generator=generator), dim=1
    )
    shuffled = categories[torch.randperm(40, generator=generator)]
    assert float(cluster_loss(clustered, categories)) < 0.5 * float(cluster_loss(clustered, shuffled))
    # centroids from keys of the queue: the same ordering
    keys = torch.nn.functional.normalize(centres[categories] + 0.2 * torch.randn(40, 16, generator=generator), dim=1)
    assert float(cluster_loss(clustered, categories, keys, categories)) < float(
        cluster_loss(clustered, categories, keys, shuffled)
    )


def test_finding_categories_follow_the_named_order():
    rows = torch.stack([finding_labels(kinds) for kinds in [(), ("cardiomegaly", "pleural_effusion"),
                        ("opacity", "cardiomegaly"), ("cardiomegaly",), ("nodule",)]])  # fmt: skip
    names = [CLUSTER_CATEGORIES[i] for i in finding_category(rows).tolist()]
    assert names == ["normal", "pleural_effusion", "opacity", "cardiomegaly", "other"]


def test_the_augmentations_never_flip_left_and_right():
    torch.manual_seed(0)
    image = -torch.ones(64, 1, 32, 32)
    image[..., :12] = 1.0  # the image's left third bright
    out = augment(image)
    assert out.shape == image.shape and float(out.min()) >= -1 and float(out.max()) <= 1
    assert bool((out[..., :8].mean(dim=(1, 2, 3)) > out[..., -8:].mean(dim=(1, 2, 3))).all())
    assert not torch.equal(augment(image), augment(image))


# ---- conditions ----------------------------------------------------------------------------------


def test_a_condition_reads_finding_names_and_aliases_and_refuses_unknown_ones():
    assert parse_condition("pleural effusion; Cardiomegaly") == ("cardiomegaly", "pleural_effusion")
    assert parse_condition("pneumonia") == ("opacity",) and parse_condition("healthy lungs") == ()
    assert parse_condition("effusion, central_line") == ("pleural_effusion", "central_line")
    with pytest.raises(
        ConfigError, match=r"unknown condition 'tumour'; the conditions are: cardiomegaly, pleural effusion"
    ):
        parse_condition("effusion; tumour")
    with pytest.raises(ConfigError, match="names one or more findings"):
        parse_condition("  ")
    assert finding_labels(("edema",))[FINDING_KINDS.index("edema")] == 1


# ---- training and sampling ---------------------------------------------------------------------------


SHORT = dataclasses.replace(
    DIFFUSEVAE_TINY, **{stage: dataclasses.replace(getattr(DIFFUSEVAE_TINY, stage), num_epochs=1)
                        for stage in ("vae", "moco", "ddpm", "finetune")},
)  # fmt: skip


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("diffusevae")
    for stage in ("vae", "moco", "ddpm", "finetune"):
        assert DiffuseVAETrainer(SHORT, stage, data_dir, run, progress=False).train().finished
    return run


def test_the_four_stages_train_in_order_and_log_their_losses(trained_run):
    for stage, keys in {"vae": ("reconstruction", "kl"), "moco": ("moco_loss", "cluster_loss"),
                        "ddpm": ("diffusion_loss", "variation"), "finetune": ("representation_loss",)}.items():  # fmt: skip
        rows = metric_rows(trained_run / stage)
        assert len(rows) == 1 and rows[0]["diffusevae_stage"] == stage
        assert all(rows[0][key] is not None and math.isfinite(rows[0][key]) for key in keys)
    assert (trained_run / "ddpm" / "samples" / "ddpm_16px.png").is_file()
    finetuned = DiffuseVAE.from_checkpoint(stage_checkpoint(trained_run, "finetune"))
    ddpm = DiffuseVAE.from_checkpoint(stage_checkpoint(trained_run, "ddpm"))
    assert all(torch.equal(a, b) for a, b in zip(finetuned.vae.parameters(), ddpm.vae.parameters()))  # frozen VAE
    assert not all(torch.equal(a, b) for a, b in zip(finetuned.unet.parameters(), ddpm.unet.parameters()))


def test_a_trained_run_samples_images_of_its_size_the_same_for_the_same_seed(trained_run):
    pipe = DiffuseVAEPipeline.from_checkpoint(trained_run)
    assert pipe.model.checkpoint_info.path == stage_checkpoint(trained_run, "finetune")

    def draw(seed, **options):
        return pipe("pleural effusion; cardiomegaly", 3, generator=torch.Generator().manual_seed(seed), **options)

    outputs = draw(0, steps=4, guidance=2.0)
    assert len(outputs) == 3 and outputs[0].findings == ("cardiomegaly", "pleural_effusion")
    for output in outputs:
        assert output.image.shape == (1, 16, 16) and output.vae.shape == (1, 16, 16)
        assert 0 <= float(output.image.min()) and float(output.image.max()) <= 1
    assert torch.equal(outputs[1].image, draw(0, steps=4, guidance=2.0)[1].image)
    assert not torch.equal(outputs[1].image, draw(1, steps=4, guidance=2.0)[1].image)
    assert draw(0)[0].image.shape == (1, 16, 16)  # ancestral over all timesteps
    report = pipe("Large right pleural effusion. No pneumothorax.", 1, report=True)[0]
    assert report.findings == ("pleural_effusion",)


def test_a_stage_needs_the_stages_before_it(tmp_path, data_dir):
    with pytest.raises(CheckpointError, match="the ddpm stage needs a finished vae stage.*--stage vae"):
        DiffuseVAETrainer(SHORT, "ddpm", data_dir, tmp_path, progress=False)
    assert DiffuseVAETrainer(SHORT, "vae", data_dir, tmp_path, progress=False).train().finished
    with pytest.raises(CheckpointError, match="the finetune stage needs a finished moco stage"):
        DiffuseVAETrainer(SHORT, "finetune", data_dir, tmp_path, progress=False)
    other = dataclasses.replace(
        SHORT, vae=dataclasses.replace(SHORT.vae, model=dataclasses.replace(SHORT.vae.model, latent_dim=6))
    )
    with pytest.raises(CheckpointError, match="holds a vae model of other settings.*latent_dim"):
        DiffuseVAETrainer(other, "ddpm", data_dir, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="unknown diffusevae stage 'refine'"):
        DiffuseVAETrainer(SHORT, "refine", data_dir, tmp_path, progress=False)


def test_a_report_conditioned_model_trains_and_reads_reports(tmp_path, data_dir):
    config = dataclasses.replace(SHORT, condition=dataclasses.replace(SHORT.condition, mode="report"))
    for stage in ("vae", "ddpm"):
        assert DiffuseVAETrainer(config, stage, data_dir, tmp_path, progress=False).train().finished
    pipe = DiffuseVAEPipeline.from_checkpoint(tmp_path)
    assert pipe.mode == "report" and pipe.model.unet.condition.encoder is not None
    generator = torch.Generator().manual_seed(0)
    heart = pipe("The heart is enlarged.", 2, report=True, steps=3, generator=generator)
    assert heart[0].image.shape == (1, 16, 16) and heart[0].findings == ("cardiomegaly",)
    assert pipe("cardiomegaly", 1, steps=3)[0].image.shape == (1, 16, 16)  # a finding set, as a short report


def test_a_report_model_warm_starts_from_a_finding_set_model_but_its_condition_encoder(trained_run, tmp_path, data_dir):
    config = dataclasses.replace(SHORT, condition=dataclasses.replace(SHORT.condition, mode="report"),
                                 init_from=str(trained_run))  # fmt: skip
    source_vae = VAE.from_checkpoint(stage_checkpoint(trained_run, "vae"))
    vae = DiffuseVAETrainer(config, "vae", data_dir, tmp_path, progress=False)
    own = vae.model.state_dict()
    for key, value in source_vae.state_dict().items():
        if not key.startswith("condition."):
            assert torch.equal(own[key], value), key
    assert torch.equal(own["condition.null"], source_vae.state_dict()["condition.null"])
    assert any(k.startswith("condition.encoder.") for k in own)  # the report encoder, new
    assert vae.train().finished
    source = DiffuseVAE.from_checkpoint(stage_checkpoint(trained_run, "ddpm"))
    ddpm = DiffuseVAETrainer(config, "ddpm", data_dir, tmp_path, progress=False).model
    started, average = ddpm.unet.state_dict(), source.unet_ema.state_dict()
    assert all(torch.equal(started[k], average[k]) for k in average if not k.startswith("condition."))
    assert all(torch.equal(a, b) for a, b in zip(ddpm.unet.parameters(), ddpm.unet_ema.parameters()))
    wider = dataclasses.replace(config, ddpm=dataclasses.replace(
        config.ddpm, model=dataclasses.replace(config.ddpm.model, base_channels=4)))  # fmt: skip
    with pytest.raises(CheckpointError, match="holds another network than this run's.*warm start only"):
        DiffuseVAETrainer(wider, "ddpm", data_dir, tmp_path / "other", progress=False)


def test_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="one image size and view"):
        dataclasses.replace(
            SHORT, moco=dataclasses.replace(SHORT.moco, model=dataclasses.replace(MOCO, view="lateral"))
        )
    with pytest.raises(ConfigError, match="cond_dropout must be in"):
        dataclasses.replace(SHORT, ddpm=dataclasses.replace(SHORT.ddpm, cond_dropout=1.0))
    with pytest.raises(ConfigError, match="condition mode must be one of"):
        ConditionConfig(mode="image")
    with pytest.raises(ConfigError, match="steps must be between 1"):
        dataclasses.replace(SHORT, sample_steps=500)


def test_the_profiles_build_diffusevae_configs():
    from xrg.profiles import load_profile

    for name in ("tiny", "cpu", "paper"):
        config = DiffuseVAETrainConfig.from_profile(load_profile(name))
        assert config.image_size in (32, 64, 128, 256)
    with pytest.raises(ConfigError, match=r"unknown settings \['diffusevae.ddpm.steps'\]"):
        DiffuseVAETrainConfig.from_profile(load_profile("tiny"), {"ddpm": {"steps": 3}})


def test_the_sample_command_writes_samples_and_refuses_unknown_conditions(trained_run, tmp_path, capsys):
    out = tmp_path / "out"
    command = ["diffusevae", "sample", "--checkpoint", str(trained_run), "--out", str(out)]
    assert main([*command, "--condition", "effusion; tumour"]) == 2
    assert "unknown condition 'tumour'" in capsys.readouterr().err and not out.exists()
    assert main([*command, "--condition", "effusion", "--steps", "999"]) == 2
    assert "more than the model's 20 timesteps" in capsys.readouterr().err and not out.exists()
    main(["diffusevae", "sample", "--checkpoint", str(trained_run), "--condition", "pleural effusion", "--n", "2",
          "--steps", "3", "--guidance", "1.5", "--out", str(out), "--quiet"])  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["findings"] == ["pleural_effusion"] and manifest["sampler"] == "ddim" and manifest["guidance"] == 1.5
    )
    assert sorted(p.name for p in out.glob("*.png")) == [
        "sample_000.png",
        "sample_001.png",
        "vae_000.png",
        "vae_001.png",
    ]


# ---- the chapter's scoring helpers -------------------------------------------------------------------


def test_condition_members_retrieval_and_category_separation():
    from xrg.eval.diffusion import RealImages, category_separation, members, retrieve_by_labels, scorable_conditions

    labels = torch.stack(
        [finding_labels(k) for k in [(), ("pleural_effusion",), ("pleural_effusion", "cardiomegaly"), ()]]
    )
    assert members(labels, ()).tolist() == [True, False, False, True]
    assert members(labels, ("pleural_effusion", "cardiomegaly")).tolist() == [False, False, True, False]
    kept, skipped = scorable_conditions([(), ("cardiomegaly",)], labels)
    assert kept == [()] and skipped == {"cardiomegaly": "1 test image(s) < 2"}
    train = RealImages(torch.arange(4.0).view(4, 1, 1, 1), labels, [""] * 4, list("abcd"))
    picked = retrieve_by_labels(finding_labels(("pleural_effusion", "cardiomegaly")).unsqueeze(0), train)
    assert float(picked[0, 0, 0, 0]) == 2.0  # the train case with exactly that finding set
    generator = torch.Generator().manual_seed(0)
    categories = torch.arange(3).repeat_interleave(20)
    centres = torch.nn.functional.normalize(torch.randn(3, 8, generator=generator), dim=1)
    clustered = centres[categories] + 0.1 * torch.randn(60, 8, generator=generator)
    good, shuffled = (
        category_separation(clustered, categories),
        category_separation(torch.randn(60, 8, generator=generator), categories),
    )
    assert good["knn_accuracy"]["value"] > 0.9 > shuffled["knn_accuracy"]["value"] and good["chance"] == pytest.approx(
        1 / 3
    )
    assert good["silhouette"] > shuffled["silhouette"]


def test_case_quality_scores_images_faithful_to_their_cases_above_images_that_ignore_them():
    from xrg.eval.diffusion import Judge, RealImages, case_kinds, case_quality

    generator = torch.Generator().manual_seed(0)
    k = FINDING_KINDS.index("pleural_effusion")
    labels = torch.zeros(40, len(FINDING_KINDS))
    labels[::2, k] = 1

    def draw(shows):  # noise images whose first pixel says whether they show the effusion
        images = 0.5 * torch.rand(len(shows), 1, 4, 4, generator=generator)
        images[:, 0, 0, 0] = shows
        return images

    def probabilities(images):
        out = torch.zeros(len(images), len(FINDING_KINDS))
        out[:, k] = images[:, 0, 0, 0]
        return out

    judge = Judge(features=lambda images: images.flatten(1), calls=lambda images: probabilities(images) >= 0.5,
                  probabilities=probabilities, judgeable=("pleural_effusion",),
                  thresholds=dict.fromkeys(FINDING_KINDS, 0.5))  # fmt: skip
    real = RealImages(draw(labels[:, k]), labels, [""] * 40, [str(i) for i in range(40)])
    faithful = case_quality(draw(labels[:, k]), labels, judge, real)
    ignoring = case_quality(draw(torch.zeros(40)), labels, judge, real)
    assert faithful["n"] == 40 and faithful["fid"] < ignoring["fid"]
    assert faithful["detection"]["value"] == pytest.approx(1.0) and ignoring["detection"]["value"] == pytest.approx(0.0)
    assert case_kinds(labels[:2]) == [("pleural_effusion",), ()]
    with pytest.raises(ConfigError, match="at least 2 images"):
        case_quality(draw(torch.ones(1)), labels[:1], judge, real)


def test_the_training_benchmark_times_every_stage_with_the_stages_own_steps(tmp_path, capsys):
    from xrg.train.benchmarks import bench_train_diffusevae

    lines: list[str] = []
    rows = bench_train_diffusevae("tiny", steps=1, warmup=0, device="cpu", train_cases=40, vocab_size=50,
                                  print_fn=lines.append, jsonl=tmp_path / "bench.jsonl")  # fmt: skip
    assert [row["stage"] for row in rows] == ["vae", "moco", "ddpm", "finetune"]
    assert all(row["images_per_s"] > 0 and row["phase_seconds"] > 0 and row["flops_per_image"] > 0 for row in rows)
    assert "estimated training time of the four stages for 40 train cases" in lines[-2]
    assert len((tmp_path / "bench.jsonl").read_text().splitlines()) == 4
    capsys.readouterr()
    assert main(["bench", "train", "--family", "diffusevae", "--profile", "tiny", "--steps", "1", "--reference"]) != 0
    assert "time XRayGAN steps; drop --family diffusevae" in capsys.readouterr().err
