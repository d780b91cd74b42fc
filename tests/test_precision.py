"""precision auto: the choice from injected measurements (fast bf16, slow bf16, CUDA), the real choice on
this machine against an independent timing, the per-machine cache, and MFU above 100% caught."""

from __future__ import annotations

import math
import time

import pytest
import torch

from mai.errors import MaiError
from mai.precision import BF16_MARGIN, cached, choose_precision, machine_key, measure_bf16_factor
from mai.train.peak import MfuMeter, measure_matmul_flops


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAI_CACHE_DIR", str(tmp_path / "cache"))


def test_fast_bf16_cpu_picks_bf16_with_its_factor():
    choice = choose_precision("auto", "cpu", measure=lambda rows: 3.1, hardware=True)
    assert choice.name == "bf16" and choice.dtype == torch.bfloat16
    assert choice.line() == "precision bf16: 3.1× fp32 on this CPU"


def test_slow_bf16_cpu_picks_fp32_and_says_why():
    choice = choose_precision("auto", "cpu", measure=lambda rows: 0.012, hardware=False)
    assert choice.name == "fp32" and "no fast bf16 path" in choice.line() and "0.012×" in choice.line()
    # a factor inside the margin is no reason for bf16's coarser numbers either
    within_margin = choose_precision("auto", "cpu", measure=lambda rows: BF16_MARGIN * 0.95, hardware=True)
    assert within_margin.name == "fp32"
    # nor a timing that a busy machine skewed, where the flags say there are no bf16 units
    assert choose_precision("auto", "cpu", measure=lambda rows: 210.0, hardware=False).name == "fp32"
    # off x86 (no flags to read) the timing alone decides
    assert choose_precision("auto", "cpu", measure=lambda rows: 2.0, hardware=None).name == "bf16"


def test_explicit_bf16_on_a_slow_cpu_runs_but_warns_once(capsys):
    for _ in range(2):
        assert choose_precision("bf16", "cpu", measure=lambda rows: 0.0117).name == "bf16"
    err = capsys.readouterr().err
    assert err.count("warning: precision bf16 was requested") == 1 and "0.012×" in err
    assert choose_precision("fp32", "cpu", measure=lambda rows: 9.0).name == "fp32"  # explicit wins


def test_cuda_picks_bf16_where_supported():
    assert choose_precision("auto", "cuda", cuda_bf16=True).name == "bf16"
    assert choose_precision("auto", "cuda", cuda_bf16=False).name == "fp32"
    with pytest.raises(MaiError, match="no bf16 support"):
        choose_precision("bf16", "cuda", cuda_bf16=False)
    with pytest.raises(MaiError, match="not one of"):
        choose_precision("fp16", "cpu")


def training_step_speedup(rounds: int = 5) -> float:
    """bf16 autocast speed ÷ fp32 speed of a forward+backward through a small MLP block (the shape of a
    training step), timed independently of mai.precision: one thread, the dtypes alternating, best of
    each, so other jobs on the machine skew both alike."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 512))
    x = torch.randn(256, 512)

    def seconds(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x).square().mean().backward()
        return time.perf_counter() - start

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seconds(False), seconds(True)  # warm-up
        best = {False: math.inf, True: math.inf}
        for _ in range(rounds):
            best[False] = min(best[False], seconds(False))
            best[True] = min(best[True], seconds(True))
            if best[True] > 20 * best[False]:  # the slow bf16 path: no need to time it again
                break
        return best[False] / best[True]
    finally:
        torch.set_num_threads(threads)


def test_auto_on_this_machine_picks_the_dtype_that_trains_faster():
    choice = choose_precision("auto", "cpu")
    speedup = training_step_speedup()
    print(torch.backends.cpu.get_cpu_capability(), choice.line(), f"training step: bf16 {speedup:.2f}× fp32")
    if speedup > 1.5:
        assert choice.name == "bf16"
    elif speedup < 1.0:
        assert choice.name == "fp32"


def test_measurements_are_cached_per_machine(tmp_path):
    calls = []
    assert cached("x", lambda: calls.append(1) or 2.5) == 2.5
    assert cached("x", lambda: calls.append(1) or 9.0) == 2.5 and len(calls) == 1
    assert cached("x", lambda: 7.0, refresh=True) == 7.0
    # a peak keeps the best rate seen: a measurement taken under load never lowers it
    assert cached("peak", lambda: 5.0, keep_max=True) == 5.0
    assert cached("peak", lambda: 3.0, keep_max=True) == 5.0
    assert cached("peak", lambda: 6.0, keep_max=True) == 6.0
    key = machine_key()
    assert torch.__version__ in key and torch.backends.cpu.get_cpu_capability() in key
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        assert machine_key() != key  # another thread count is another measurement
    finally:
        torch.set_num_threads(threads)


def test_measurement_is_a_real_ratio():
    factor = measure_bf16_factor(rows=64)
    assert 0.0001 < factor < 100
    assert measure_matmul_flops(torch.float32, max_n=512) > 1e8


def test_an_absurd_mfu_is_remeasured_then_shown_as_unknown():
    said = []
    meter = MfuMeter(1e9, lambda: 4e9, said.append)  # a 1 GFLOP/s "peak" on a 2 GFLOP/s run
    assert meter(2e9) == pytest.approx(0.5) and len(said) == 1 and "re-measured" in said[0]
    assert meter(3e9) == pytest.approx(0.75)
    assert math.isnan(meter(8e9)) and "shown as unknown" in said[-1]
    assert math.isnan(meter(1e9)) and len(said) == 2  # said once; unknown from then on
    fixed = MfuMeter(1e9, None, said.append)  # an explicit train.peak_tflops is not re-measured
    assert math.isnan(fixed(5e9))
