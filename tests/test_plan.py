"""Planner: predicts the MFU of published runs (Megatron-LM, torchtitan) within ±15% with one set of
constants, models the pipeline bubble and each dimension's communication, checks divisibility, and prints
MAI-1 plans that fit."""

from pathlib import Path

import pytest

from mai.cli import main
from mai.plan import (
    ANCHORS,
    GPUS,
    SOFTWARE,
    Layout,
    anchor_plans,
    bubble_fraction,
    ep_seconds,
    format_anchors,
    model_config,
    plan,
    search,
    tp_seconds,
)

MEGATRON_462B = next(a for a in ANCHORS if a.model == "megatron-462b").layout


@pytest.mark.parametrize("anchor,p", anchor_plans(), ids=[a.label for a in ANCHORS])
def test_predicted_mfu_within_15_percent_of_published(anchor, p):
    assert not p.errors
    assert p.predicted_mfu == pytest.approx(anchor.published_mfu, rel=0.15)


def test_anchor_set_is_the_published_one():
    published = sorted(round(a.published_mfu, 3) for a in ANCHORS)
    # Megatron-LM README: 41/47/42/47%; torchtitan: 5,762 and 6,667 tokens/s/GPU on Llama-3.1-8B
    assert published == [0.337, 0.39, 0.41, 0.42, 0.47, 0.47]


def test_462b_flop_count_and_throughput_match_megatron():
    p = plan("megatron-462b", "h100", MEGATRON_462B, software="megatron")
    # Megatron-LM's own model-FLOP formula (Narayanan et al. 2021, eq. 3 without recompute):
    # 72·B·s·l·h²·(1 + s/(6h) + V/(12·h·l)) per iteration.
    b, s, layers, h, v = 3072, 4096, 112, 18432, 131072
    flops = 72 * b * s * layers * h * h * (1 + s / (6 * h) + v / (12 * h * layers))
    assert p.flops_per_token * b * s == pytest.approx(flops, rel=0.01)
    assert p.tflops_per_gpu == pytest.approx(459.9, rel=0.15)  # the published TFLOP/s per GPU
    assert p.memory_total < 80 * 2**30  # the published layout ran on 80 GB GPUs


def test_bubble_formulas():
    one = Layout(gpus=64, tp=1, pp=8, global_batch=256)  # dp 8, m = 32
    assert bubble_fraction(one) == pytest.approx(7 / (32 + 7))
    inter = Layout(gpus=64, tp=1, pp=8, global_batch=256, schedule="interleaved", chunks=4)
    assert bubble_fraction(inter) == pytest.approx(7 / (4 * 32 + 7))
    assert bubble_fraction(Layout(gpus=64, global_batch=256)) == 0.0
    assert plan("8b", "h100", inter).time.total < plan("8b", "h100", one).time.total


def test_communication_depends_on_where_the_group_runs():
    cfg, gpu = model_config("mai-1-moe"), GPUS["h100"]
    inside = Layout(gpus=1024, tp=2, ep=4, global_batch=1024)  # ep 4 × tp 2 = one node: NVLink
    across = Layout(gpus=1024, tp=2, ep=32, global_batch=1024)  # spans nodes: the network
    assert ep_seconds(cfg, gpu, across) > 5 * ep_seconds(cfg, gpu, inside)
    dense = model_config("mai-1-500b")
    node, two_nodes = Layout(gpus=64, tp=8), Layout(gpus=64, tp=16)
    assert tp_seconds(dense, gpu, two_nodes, False) > 5 * tp_seconds(dense, gpu, node, False)
    assert tp_seconds(dense, gpu, Layout(gpus=64, tp=1), False) == 0.0


def test_fsdp_traffic_shows_when_it_outgrows_compute():
    # 8B on 64 GPUs over the network: one sequence per rank hides less of the gathers than sixteen
    small = plan("8b", "h100", Layout(gpus=64, micro_batch=1, global_batch=64, seq_len=1024))
    big = plan("8b", "h100", Layout(gpus=64, micro_batch=16, global_batch=1024, seq_len=1024))
    assert small.time.dp / small.time.total > big.time.dp / big.time.total
    assert small.predicted_mfu < big.predicted_mfu


def test_software_recompute_and_override():
    lay = Layout(gpus=8, micro_batch=2, seq_len=8192, global_batch=16)
    compiled, eager = plan("8b", "h100", lay), plan("8b", "h100", lay, software="eager")
    assert eager.predicted_mfu < compiled.predicted_mfu
    full = plan("8b", "h100", Layout(gpus=8, micro_batch=2, seq_len=8192, global_batch=16,
                                      activation_checkpointing="full"))
    assert full.predicted_mfu < compiled.predicted_mfu
    given = plan("8b", "h100", lay, mfu=0.5)
    assert given.mfu == 0.5 and given.mfu_given and given.predicted_mfu == compiled.predicted_mfu
    assert given.step_s == pytest.approx(compiled.step_s * compiled.predicted_mfu / 0.5)
    assert set(SOFTWARE) >= {"compiled", "eager", "megatron"}


def test_divisibility_errors_are_reported():
    bad = plan("mai-1-500b", "h100", Layout(gpus=100, tp=7, pp=3, global_batch=10), mfu=0.4)
    text = " ".join(bad.errors)
    assert "heads 144 not divisible by tp 7" in text and "≠ 100 GPUs" in text and not bad.fits
    moe = plan("mai-1-moe", "h100", Layout(gpus=64, tp=1, ep=5, global_batch=64), mfu=0.4)
    assert any("192 experts not divisible by ep 5" in e for e in moe.errors)
    inter = plan("8b", "h100", Layout(gpus=16, pp=2, schedule="interleaved", chunks=1, global_batch=64))
    assert any("chunks ≥ 2" in e for e in inter.errors)


def test_memory_falls_with_sharding_and_checkpointing():
    def total(**kw):
        lay = Layout(gpus=1024, tp=8, pp=8, global_batch=1024, **kw)
        return plan("mai-1-500b", "h100", lay, 0.4).memory_total

    assert total(zero=3) < total(zero=1) < total(zero=0)
    assert total(activation_checkpointing="full") < total(activation_checkpointing="selective") \
        < total(activation_checkpointing="none")


def test_search_lists_only_fitting_layouts_fastest_first():
    found = search("mai-1-500b", "h100", 4096, 8192, 2048)
    assert found and all(p.fits for p in found)
    assert [p.time.total for p in found] == sorted(p.time.total for p in found)
    assert search("mai-1-500b", "h100", 8, 8192, 64) == []  # 500B cannot fit on one node


# The README's and docs/scale.md's headline plans: they must fit as MAI is written.
HEADLINES = [
    ["--preset", "mai-1-500b", "--gpus", "4096", "--tp", "4", "--micro-batch", "2", "--seq-len", "8192",
     "--global-batch", "2048", "--activation-checkpointing", "full"],
    ["--preset", "mai-1-500b", "--gpus", "4096", "--tp", "8", "--pp", "8", "--seq-len", "8192",
     "--global-batch", "2048", "--activation-checkpointing", "full", "--zero", "1", "--schedule",
     "interleaved", "--chunks", "2"],
    ["--preset", "mai-1-moe", "--gpus", "1024", "--tp", "2", "--ep", "64", "--micro-batch", "2",
     "--global-batch", "1024", "--activation-checkpointing", "full"],
]


@pytest.mark.parametrize("args", HEADLINES, ids=["500b-fsdp", "500b-pp", "moe"])
def test_cli_prints_mai1_plans_that_fit(capsys, args):
    assert main(["plan", *args]) == 0
    out = capsys.readouterr().out
    for word in ("memory per GPU", "step model", "predicted MFU", "TFLOP/s per GPU", "days for"):
        assert word in out
    assert "(fits)" in out and "(predicted)" in out


def test_cli_anchors_search_and_errors(capsys):
    assert main(["plan", "--anchors"]) == 0
    out = capsys.readouterr().out
    assert out.count("| Megatron-LM") == 4 and out.count("| torchtitan Llama") == 2
    assert main(["plan", "--preset", "mai-1-moe", "--gpus", "1024", "--search"]) == 0
    assert "GiB/GPU" in capsys.readouterr().out
    assert main(["plan", "--preset", "8b", "--gpus", "8", "--mfu", "0.3"]) == 0
    assert "(given by --mfu)" in capsys.readouterr().out
    for bad, message in ((["--preset", "nope", "--gpus", "8"], "unknown preset"),
                         (["--preset", "8b"], "needs --preset and --gpus"),
                         (["--preset", "8b", "--gpus", "8", "--software", "x"], "unknown software"),
                         (["--preset", "mai-1-500b", "--gpus", "8", "--search"], "no layout")):
        assert main(["plan", *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err and err.count("\n") == 1


def test_docs_show_the_real_output(capsys):
    """README's headline plan and docs/scale.md's tables are what the commands print today."""
    root = Path(__file__).resolve().parents[1]
    docs = (root / "docs" / "scale.md").read_text()
    assert format_anchors() in docs
    readme = (root / "README.md").read_text()
    for text, args in ((readme, HEADLINES[0]), (docs, HEADLINES[1]), (docs, HEADLINES[2])):
        assert main(["plan", *args]) == 0
        assert capsys.readouterr().out.strip() in text
