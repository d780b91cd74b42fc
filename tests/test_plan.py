"""Planner: reproduces Megatron-LM's 462B anchor, checks divisibility, and prints MAI-1 plans."""

import pytest

from mai.cli import main
from mai.plan import Layout, plan, search

ANCHOR = Layout(gpus=6144, tp=8, pp=16, dp=48, global_batch=3072, seq_len=4096,
                activation_checkpointing="full", zero=1)


def test_reproduces_megatron_462b_within_ten_percent():
    p = plan("megatron-462b", "h100", ANCHOR, mfu=0.47)
    # Megatron-LM's own model-FLOP formula (Narayanan et al. 2021, eq. 3 without recompute):
    # 72·B·s·l·h²·(1 + s/(6h) + V/(12·h·l)) per iteration.
    b, s, layers, h, v = 3072, 4096, 112, 18432, 131072
    flops = 72 * b * s * layers * h * h * (1 + s / (6 * h) + v / (12 * h * layers))
    published_step = flops / (6144 * 459.9e12)  # 459.9 TFLOP/s per GPU measured
    assert p.step_s == pytest.approx(published_step, rel=0.10)
    assert p.tflops_per_gpu == pytest.approx(459.9, rel=0.10)
    assert p.flops_per_token * b * s == pytest.approx(flops, rel=0.01)
    assert p.fits and not p.errors  # the published layout ran, so it must fit in 80 GB


def test_divisibility_errors_are_reported():
    bad = plan("mai-1-500b", "h100", Layout(gpus=100, tp=7, pp=3, global_batch=10), mfu=0.4)
    text = " ".join(bad.errors)
    assert "heads 144 not divisible by tp 7" in text and "≠ 100 GPUs" in text and not bad.fits
    moe = plan("mai-1-moe", "h100", Layout(gpus=64, tp=1, ep=5, global_batch=64), mfu=0.4)
    assert any("192 experts not divisible by ep 5" in e for e in moe.errors)


def test_memory_falls_with_sharding_and_checkpointing():
    def total(**kw):
        lay = Layout(gpus=1024, tp=8, pp=8, global_batch=1024, **kw)
        return plan("mai-1-500b", "h100", lay, 0.4).memory_total

    assert total(zero=3) < total(zero=1) < total(zero=0)
    assert total(activation_checkpointing="full") < total(activation_checkpointing="selective") \
        < total(activation_checkpointing="none")


def test_search_lists_only_fitting_layouts_best_first():
    found = search("mai-1-500b", "h100", 4096, 8192, 2048, 0.4)
    assert found and all(p.fits for p in found)
    assert found[0].bubble <= found[-1].bubble
    assert search("mai-1-500b", "h100", 8, 8192, 64, 0.4) == []  # 500B cannot fit on one node


@pytest.mark.parametrize("preset,extra", [("mai-1-500b", ["--tp", "8", "--pp", "8", "--seq-len", "8192"]),
                                          ("mai-1-moe", ["--tp", "2", "--ep", "32"])])
def test_cli_prints_mai1_plans(capsys, preset, extra):
    assert main(["plan", "--preset", preset, "--gpus", "4096", "--global-batch", "2048", *extra]) == 0
    out = capsys.readouterr().out
    for word in ("memory per GPU", "FLOPs per token", "TFLOP/s per GPU", "days for"):
        assert word in out
    assert "(fits)" in out


def test_cli_search_and_errors(capsys):
    assert main(["plan", "--preset", "mai-1-moe", "--gpus", "1024", "--search"]) == 0
    assert "GiB/GPU" in capsys.readouterr().out
    assert main(["plan", "--preset", "nope", "--gpus", "8"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["plan", "--preset", "mai-1-500b", "--gpus", "8", "--search"]) == 2
