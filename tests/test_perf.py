"""FLOP counts, device peaks and the benchmark rows that use them (xrg.perf, xrg bench train)."""

from __future__ import annotations

import json

import pytest
import torch

from xrg import perf
from xrg.train.benchmarks import bench_train


def test_flops_of_a_linear_layer_and_a_convolution_are_the_textbook_counts():
    linear = torch.nn.Linear(4, 3, bias=False)
    x = torch.randn(5, 4)
    assert perf.count_flops(lambda: linear(x)) == 2 * 5 * 4 * 3
    conv = torch.nn.Conv2d(1, 2, kernel_size=3, bias=False)
    image = torch.randn(1, 1, 5, 5)
    assert perf.count_flops(lambda: conv(image)) == 2 * (2 * 3 * 3) * (3 * 3)
    # forward and backward: the input and the weight gradients cost a forward each
    assert perf.count_flops(lambda: linear(x.requires_grad_()).sum().backward()) == 3 * 2 * 5 * 4 * 3


@pytest.mark.parametrize(
    ("flags", "vendor", "expected"),
    [
        ({"avx2", "fma"}, "GenuineIntel", 32),
        ({"avx2", "fma", "avx512f"}, "GenuineIntel", 64),
        ({"avx2", "fma", "avx512f"}, "AuthenticAMD", 32),
        ({"sse2"}, "AuthenticAMD", 8),
    ],
)
def test_fp32_flops_per_cycle_follow_the_vector_units(flags, vendor, expected):
    assert perf.cpu_flops_per_cycle(flags, vendor)[0] == expected


def test_the_cpu_peak_counts_the_cores_in_use():
    one, two = perf.device_peak("cpu", threads=1), perf.device_peak("cpu", threads=2)
    if one.flops_per_s is None:
        pytest.skip(f"this machine reports no clock: {one.basis}")
    assert two.flops_per_s == pytest.approx(2 * one.flops_per_s)
    assert "core(s)" in two.basis and "FLOP/cycle" in two.basis


def test_bench_train_rows_carry_flops_a_fraction_of_peak_and_go_to_jsonl(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    rows = bench_train("tiny", steps=1, warmup=0, device="cpu", jsonl=out)
    assert all(row["flops_per_image"] > 0 and row["flops_per_step"] > 0 for row in rows)
    for row in rows:
        assert row["achieved_flops_per_s"] == pytest.approx(row["flops_per_step"] / row["seconds_per_step"])
        if row["fraction_of_peak"] is not None:
            assert 0 < row["fraction_of_peak"] < 1
    # a 32² GAN step does more arithmetic per image than a 16² one
    gan = {row["image_size"]: row["flops_per_image"] for row in rows if row["phase"] == "gan"}
    assert gan[32] > gan[16]
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["phase"] for w in written] == [row["phase"] for row in rows]
    assert all(w["torch"] == torch.__version__ and "peak" in w for w in written)
    assert "of peak" in capsys.readouterr().out


def test_bench_speedup_times_the_library_step_against_the_plain_reference_step():
    from xrg.train.benchmarks import bench_speedup

    lines = []
    rows = bench_speedup("tiny", steps=1, warmup=0, device="cpu", vocab_size=50, print_fn=lines.append)
    assert [row["image_size"] for row in rows] == [16, 32]  # every GAN phase of the tiny profile
    for row in rows:
        assert row["reference_seconds"] > 0 and row["library_seconds"] > 0
        assert row["speedup"] == pytest.approx(row["reference_seconds"] / row["library_seconds"])
    assert any("speed-up" in line for line in lines)
    fast = bench_speedup("tiny", steps=1, warmup=0, device="cpu", vocab_size=50, print_fn=lines.append,
                         precision="bfloat16", channels_last=True)  # fmt: skip
    assert [(row["precision"], row["channels_last"]) for row in fast] == [("bfloat16", True)] * 2
    assert "library step: bfloat16, channels_last" in lines[-4]
