"""Generation (xrg.pipelines) and the train/generate/bench commands, end to end on the real tiny dataset."""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from xrg.cli import main
from xrg.data.images import load_grayscale
from xrg.errors import EmptyReportError, ReportError
from xrg.pipelines import Pipeline, XRayGANPipeline
from xrg.train.benchmarks import bench_generate


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_data) -> Path:
    """`xrg train xraygan --profile tiny` on the 12-case rendered dataset (VCNs included)."""
    run = tmp_path_factory.mktemp("tiny-run")
    assert main(["train", "xraygan", "--profile", "tiny", "--data", str(tiny_data), "--out", str(run), "--quiet"]) == 0
    return run


@pytest.fixture(scope="module")
def pipe(tiny_run) -> XRayGANPipeline:
    return XRayGANPipeline.from_checkpoint(tiny_run)


REPORT = "FINDINGS: The heart is normal in size. The lungs are clear. IMPRESSION: No acute disease."


def test_training_wrote_the_run(tiny_run):
    assert {p.name for p in (tiny_run / "vcn").glob("*.pt")} == {"vcn_16.pt", "vcn_32.pt"}
    assert (tiny_run / "metrics.jsonl").is_file() and (tiny_run / "samples" / "stage1_32px.png").is_file()


def test_the_pipeline_makes_both_views_at_the_final_size(pipe):
    output = pipe(REPORT)
    assert pipe.image_size == 32 and not pipe.model.training
    for image in (output.frontal, output.lateral):
        assert image.shape == (1, 32, 32) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert not torch.equal(output.frontal, output.lateral)
    images = output.images()
    assert (
        set(images) == {"frontal", "lateral"} and images["frontal"].size == (32, 32) and images["frontal"].mode == "L"
    )
    assert output.warnings == []  # a finished run, a short report


def test_generation_is_deterministic_and_ignores_the_generator_without_noise(pipe):
    first = pipe(REPORT, generator=torch.Generator().manual_seed(1))
    second = pipe(REPORT, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first.frontal, second.frontal) and torch.equal(first.lateral, second.lateral)
    other = pipe("FINDINGS: Large right pleural effusion. IMPRESSION: Effusion.")
    assert not torch.equal(first.frontal, other.frontal)


def test_with_noise_the_generator_seeds_the_output(pipe):
    config = dataclasses.replace(pipe.config, noise_dim=4)
    noisy = XRayGANPipeline.from_config(config, pipe.vocabulary, seed=0)
    a = noisy(REPORT, generator=torch.Generator().manual_seed(5))
    b = noisy(REPORT, generator=torch.Generator().manual_seed(5))
    c = noisy(REPORT, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.frontal, b.frontal) and not torch.equal(a.frontal, c.frontal)


def test_unknown_words_are_counted_and_attention_matches_the_tokens(pipe):
    known = [word for word in pipe.vocabulary.words[2:] if word.isalpha()][:3]
    text = f"FINDINGS: {known[0]} zorblax {known[1]}. {known[2]} quibbit. IMPRESSION: {known[0]}."
    output = pipe(text)
    assert output.unknown_words == ["zorblax", "quibbit"] and output.num_unknown_words == 2
    findings = output.attention["findings"]
    assert findings.sentences == [[known[0], "zorblax", known[1]], [known[2], "quibbit"]]
    assert [len(w) for w in findings.word_weights] == [3, 2]
    for weights in findings.word_weights:
        assert sum(weights) == pytest.approx(1.0, abs=1e-5)
    assert sum(findings.sentence_weights) == pytest.approx(1.0, abs=1e-5)
    assert output.attention["impression"].sentences == [[known[0]]]


def test_a_list_of_reports_gives_one_output_each_as_one_at_a_time(pipe):
    reports = [REPORT, "FINDINGS: Large right pleural effusion zorblax. IMPRESSION: Effusion.", "Mild cardiomegaly."]
    batched = pipe(reports)
    assert isinstance(batched, list) and len(batched) == 3 and pipe(()) == []
    for report, output in zip(reports, batched):
        single = pipe(report)
        assert type(output) is type(single) and output.frontal.shape == single.frontal.shape == (1, 32, 32)
        torch.testing.assert_close(output.frontal, single.frontal, atol=1e-5, rtol=0)
        torch.testing.assert_close(output.lateral, single.lateral, atol=1e-5, rtol=0)
        assert (output.findings, output.impression, output.unknown_words, output.warnings) == (
            single.findings, single.impression, single.unknown_words, single.warnings
        )  # fmt: skip
        for name, attention in single.attention.items():
            assert output.attention[name].sentences == attention.sentences
            for batched_weights, single_weights in zip(
                output.attention[name].word_weights, attention.word_weights, strict=True
            ):
                assert batched_weights == pytest.approx(single_weights, abs=1e-5)
            assert output.attention[name].sentence_weights == pytest.approx(attention.sentence_weights, abs=1e-5)
    assert batched[1].unknown_words == ["zorblax"]
    with pytest.raises(EmptyReportError, match=r"\(report 2 of the list of 2\)"):
        pipe([REPORT, "   "])
    with pytest.raises(ReportError, match="a tuple of reports must hold strings, got a bytes"):
        pipe((REPORT, b"FINDINGS: heart."))
    with pytest.raises(ReportError, match="report text must be a string, got NoneType"):
        pipe(None)


def test_the_pipeline_is_a_pipeline(pipe):
    assert isinstance(pipe, Pipeline) and pipe.views == ("frontal", "lateral") and pipe.image_size == 32


def test_plain_text_is_read_as_findings(pipe):
    output = pipe("Mild cardiomegaly. Small left pleural effusion.")
    assert output.findings == "Mild cardiomegaly. Small left pleural effusion." and output.impression == ""
    assert output.attention["impression"].sentences == [] and output.attention["impression"].sentence_weights == []


@pytest.mark.parametrize("report", ["", "   \n\t ", "... !!! --", "INDICATION: chest pain."])
def test_an_empty_report_is_refused(pipe, report):
    with pytest.raises(EmptyReportError):
        pipe(report)


def test_an_over_long_report_is_truncated_with_a_warning(pipe):
    long_report = "FINDINGS: " + " ".join(f"The heart is normal number {i}." for i in range(30))
    with pytest.warns(UserWarning, match="longer than the model reads"):
        output = pipe(long_report)
    assert any("findings section is longer" in note for note in output.warnings)
    assert len(output.attention["findings"].sentences) == pipe.config.max_sentences
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe(REPORT)  # a report that fits warns nothing


def test_the_flat_encoder_ablation_has_no_attention(pipe):
    config = dataclasses.replace(pipe.config, encoder_kind="flat")
    output = XRayGANPipeline.from_config(config, pipe.vocabulary)(REPORT)
    assert output.attention == {} and output.frontal.shape == (1, 32, 32)


def test_an_unfinished_run_is_flagged(tmp_path, tiny_data, tiny_run):
    run = tmp_path / "partial"
    shutil.copytree(tiny_run / "vcn", run / "vcn")
    args = ["train", "xraygan", "--profile", "tiny", "--data", str(tiny_data), "--out", str(run), "--quiet"]
    assert main([*args, "--max-steps", "3"]) == 0
    output = XRayGANPipeline.from_checkpoint(run / "checkpoint.pt")(REPORT)
    assert any("unfinished training run (step 3)" in note for note in output.warnings)
    assert main([*args, "--resume"]) == 0
    assert XRayGANPipeline.from_checkpoint(run)(REPORT).warnings == []


def test_generate_command_writes_both_pngs(tmp_path, tiny_run, capsys):
    out = tmp_path / "out"
    assert main(["generate", "--checkpoint", str(tiny_run), "--report", REPORT + " Zorblax.", "--out", str(out)]) == 0
    for view in ("frontal", "lateral"):
        assert load_grayscale(out / f"{view}.png", expected_size=32).shape == (32, 32)
    printed = capsys.readouterr().out
    assert "frontal.png" in printed and "1 words not in the vocabulary" in printed and "zorblax" in printed


def test_generate_command_refuses_bad_checkpoints_with_exit_2(tmp_path, tiny_run, capsys):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tiny_run / "checkpoint.pt").read_bytes()[:1000])
    cases = {
        str(tmp_path / "missing.pt"): "does not exist",
        str(tmp_path): "without a checkpoint.pt",
        str(truncated): "truncated or corrupt",
        str(tiny_run / "vcn" / "vcn_32.pt"): "expected 'xraygan'",
    }
    for checkpoint, message in cases.items():
        assert main(["generate", "--checkpoint", checkpoint, "--report", REPORT, "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(tiny_run), "--report", "  ", "--out", str(tmp_path / "o")]) == 2
    assert "empty" in capsys.readouterr().err


def test_train_command_explains_how_to_resume(tmp_path, tiny_data, tiny_run, capsys):
    run = tmp_path / "stopped"
    shutil.copytree(tiny_run / "vcn", run / "vcn")
    args = ["train", "xraygan", "--profile", "tiny", "--data", str(tiny_data), "--out", str(run), "--quiet"]
    assert main([*args, "--set", "num_samples=0", "--max-steps", "1"]) == 0
    printed = capsys.readouterr().out
    assert "stopped (max_steps) after step 1" in printed
    assert f"--out {run} --set num_samples=0 --resume" in printed
    assert main(args + ["--resume"]) == 2  # other settings than the checkpoint's
    assert "num_samples: 0 → 4" in capsys.readouterr().err


def test_bench_generate_reports_latency(tiny_run, capsys):
    rows = bench_generate(checkpoint=tiny_run, n=3, warmup=1, devices=("cpu",))
    assert rows[0]["image_size"] == 32 and 0 < rows[0]["median_ms"] <= rows[0]["p90_ms"]
    assert "median" in capsys.readouterr().out
