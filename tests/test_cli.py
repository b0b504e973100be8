"""The xrg command line: help, the phantom command, and clear errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from xrg.cli import main
from xrg.data.images import load_grayscale


def test_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "xrg.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("data", "phantom", "bench", "book"):
        assert command in result.stdout


def test_phantom_renders_a_typed_report(tmp_path, capsys):
    args = ["phantom", "--seed", "3", "--size", "32", "--out"]
    assert main(args + [str(tmp_path / "a"), "--report", "Large right pleural effusion."]) == 0
    assert main(args + [str(tmp_path / "b"), "--report", "No pleural effusion."]) == 0
    with_effusion = load_grayscale(tmp_path / "a" / "frontal.png", expected_size=32)
    without = load_grayscale(tmp_path / "b" / "frontal.png", expected_size=32)
    lateral = load_grayscale(tmp_path / "a" / "lateral.png", expected_size=32)
    assert lateral.shape == (32, 32)
    diff = np.abs(with_effusion - without)
    # A right effusion shows on the viewer's left of the frontal (patient's right), low down.
    assert diff[:, :16].sum() > 5 * diff[:, 16:].sum()
    assert diff[16:].sum() > diff[:16].sum()
    out = capsys.readouterr().out
    assert "pleural" in out


def test_bad_input_gives_exit_2_and_a_message(tmp_path, capsys):
    assert main(["data", "build", "--profile", "nonexistent"]) == 2
    assert "nonexistent" in capsys.readouterr().err
    assert main(["phantom", "--report", "   ", "--out", str(tmp_path)]) == 2
    assert "empty" in capsys.readouterr().err.lower()
    assert main(["phantom", "--report-file", str(tmp_path / "missing.txt"), "--out", str(tmp_path)]) == 2


def test_train_baseline_stops_and_resumes_from_the_command_line(tiny_data, tmp_path, capsys):
    out = tmp_path / "gan_int_cls"
    common = ["train", "baseline", "--method", "gan_int_cls", "--profile", "tiny", "--data", str(tiny_data),
              "--out", str(out), "--quiet"]  # fmt: skip
    assert main(common + ["--max-steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "stopped (max_steps) after step 2" in printed
    assert "resume with: xrg train baseline --method gan_int_cls --profile tiny" in printed and "--resume" in printed
    assert main(common) == 2  # the run directory holds a run: refused without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(common + ["--resume"]) == 0
    assert "finished after" in capsys.readouterr().out
    assert (out / "checkpoint.pt").is_file() and (out / "metrics.jsonl").is_file()


def test_train_pggan_stops_resumes_and_takes_dotted_settings(tiny_data, tmp_path, capsys):
    import torch

    out = tmp_path / "pggan"
    common = ["train", "pggan", "--profile", "tiny", "--data", str(tiny_data), "--out", str(out), "--quiet",
              "--set", "model.latent_dim=24"]  # fmt: skip
    assert main(common + ["--max-steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "stopped (max_steps) after step 2" in printed
    assert "resume with: xrg train pggan --profile tiny" in printed and "--set model.latent_dim=24 --resume" in printed
    assert main(common + ["--resume"]) == 0
    assert "finished after" in capsys.readouterr().out
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    assert payload["kind"] == "pggan" and payload["model_config"]["latent_dim"] == 24
    assert payload["model_config"]["final_size"] == 32 and payload["progress"]["finished"] is True
    assert main(common[:-2] + ["--set", "model.width=3", "--force"]) == 2
    assert "unknown settings ['pggan.model.width']" in capsys.readouterr().err


def test_train_set_takes_dotted_model_keys_and_refuses_unknown_ones(data_dir, tmp_path, capsys):
    import torch

    out = tmp_path / "run"
    common = ["train", "xraygan", "--profile", "tiny", "--data", str(data_dir), "--out", str(out), "--quiet",
              "--set", "vc_weight=0", "--set", "num_samples=0"]  # fmt: skip
    assert main(common + ["--set", "model.width=3"]) == 2
    assert "unknown settings ['xraygan.model.width']" in capsys.readouterr().err
    assert main(common + ["--set", "hidden=12"]) == 2
    assert "xraygan.hidden is now xraygan.model.hidden" in capsys.readouterr().err
    assert not (out / "checkpoint.pt").exists()
    assert main(common + ["--set", "model.hidden=12", "--set", "model.share_embedding=false", "--max-steps", "1"]) == 0
    printed = capsys.readouterr().out
    assert "--set model.hidden=12 --set model.share_embedding=false" in printed  # the resume command keeps them
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    assert payload["model_config"]["hidden"] == 12 and payload["model_config"]["share_embedding"] is False
    assert payload["config"]["model"]["hidden"] == 12 and payload["config"]["model"]["base_size"] == 16  # the profile's
    assert payload["state"]["encoder"]["findings.word_lstm.weight_hh_l0"].shape[1] == 12
