"""The GPU path, checked on CPU where it can be: defaults that are right on CUDA (bf16 FSDP weights with
fp32 gradient reduction, NCCL bound to its device with a timeout, fused AdamW, pinned non-blocking
batches), a training step that never waits for the device, and the sharded initialisation's values."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

from mai.config import resolve
from mai.errors import MaiError
from mai.model.config import ModelConfig
from mai.model.transformer import Transformer
from mai.parallel import ParallelConfig
from mai.parallel.init import _global_positions, fill_normal_, init_weights, materialize, normal_at
from mai.parallel.mesh import init_kwargs
from mai.parallel.parallelize import mixed_precision
from mai.train.batches import DeviceBatches
from mai.train.config import RunConfig
from mai.train.guard import StepGuard
from mai.train.trainer import Runtime, build_optimizer, lm_loss, train_step


def test_fsdp_defaults_to_bf16_weights_and_fp32_reduction_on_cuda_only():
    cuda, cpu = mixed_precision(ParallelConfig(), "cuda"), mixed_precision(ParallelConfig(), "cpu")
    assert (cuda.param_dtype, cuda.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert (cpu.param_dtype, cpu.reduce_dtype) == (torch.float32, torch.float32)
    forced = mixed_precision(ParallelConfig(param_dtype="float32"), "cuda")
    assert forced.param_dtype == torch.float32


def test_nccl_is_bound_to_the_local_device_with_a_timeout(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert init_kwargs("cuda", 5) == {"backend": "nccl", "device_id": torch.device("cuda", 3),
                                      "timeout": timedelta(minutes=5)}
    assert init_kwargs("cpu", 10) == {"backend": "gloo", "timeout": timedelta(minutes=10)}
    with pytest.raises(MaiError, match="timeout_minutes must be positive"):
        ParallelConfig(timeout_minutes=0).resolve(1)


def test_adamw_is_fused():
    model = torch.nn.Linear(4, 4)
    assert build_optimizer(model, RunConfig()).defaults["fused"] is True


class Counter:
    """A sampler whose batch i is a function of i."""

    def __init__(self):
        self.i = 0

    def next_batch(self):
        self.i += 1
        return torch.full((2, 9), self.i), torch.full((2, 9), -self.i)

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def test_read_ahead_batches_resume_exactly():
    """The checkpointed state is the consumer's, not the read-ahead sampler's: resuming from it draws the
    batch that was read ahead but never used."""
    batches = DeviceBatches(Counter(), torch.device("cpu"))
    assert not batches.pin and DeviceBatches(Counter(), torch.device("cuda")).pin
    seen = [int(batches.next_batch()[0][0, 0]) for _ in range(3)]
    state = batches.state_dict()
    assert seen == [1, 2, 3] and state == {"i": 3} and batches.sampler.i == 4  # 4 is read ahead
    again = DeviceBatches(Counter(), torch.device("cpu"))
    again.load_state_dict(state)
    assert int(again.next_batch()[0][0, 0]) == int(batches.next_batch()[0][0, 0]) == 4


def tiny_model() -> Transformer:
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64,
                      max_seq_len=16)
    with torch.device("meta"):
        model = Transformer(cfg)
    materialize(model, torch.device("cpu"), seed=1)
    return model


def test_training_step_never_reads_the_device(monkeypatch):
    """Every way a tensor's value reaches Python (the host syncs of a GPU step) fails inside the step."""
    model = tiny_model()
    cfg = resolve(RunConfig, {}, ["optim.grad_clip=0.5"])
    optimizer = build_optimizer(model, cfg)
    rt = Runtime(torch.device("cpu"), 0, 1, 0, 1, grad_accum=2)
    guard = StepGuard(rt.device, loss_spike=3.0)

    class Tokens(Counter):
        def next_batch(self):
            self.i += 1
            t = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(self.i))
            return t[:, :-1], t[:, 1:]

    batches = DeviceBatches(Tokens(), rt.device)
    before = [p.detach().clone() for p in model.parameters()]

    def sync(*args, **kwargs):
        raise AssertionError("a host sync inside the training step")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"):
            m.setattr(torch.Tensor, name, sync)
        for _ in range(2):
            out = train_step(model, model, optimizer, batches, lm_loss, no_autocast, rt, cfg, guard, False)
    assert out.loss.item() > 0 and out.grad_norm.item() > 0
    assert guard.read() == ([False, False], 0)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def no_autocast():
    return torch.autocast("cpu", enabled=False)


def test_sharded_init_values_are_the_single_process_values():
    """Each element's value depends only on (seed, name, position): any box of the tensor computed alone
    equals that box of the whole, and the values are standard normal."""
    z = normal_at(torch.arange(200_000), key=12345)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    full = torch.empty(6, 10)
    fill_normal_(full, 0.5, key=7)
    part = torch.empty(2, 4)
    where = _global_positions((2, 4), (3, 5), (6, 10), 0, 8, torch.device("cpu"))
    part.view(-1)[:] = (normal_at(where, 7) * 0.5).float()
    assert torch.equal(part, full[3:5, 5:9])
    a, b = tiny_model(), tiny_model()
    assert all(torch.equal(x, b.state_dict()[k]) for k, x in a.state_dict().items())
    init_weights(b, seed=2)
    assert not torch.equal(a.output.weight, b.output.weight)
    assert float(a.layers["0"].attention.wq.weight.detach().std()) == pytest.approx(a.cfg.init_std, rel=0.1)


def test_validation_runs_micro_batches_weighted_by_rows():
    """Each forward sees one given micro-batch (never a global batch), and a short last batch counts for
    its rows only, so the mean does not depend on how the windows were grouped."""
    from mai.train.trainer import evaluate

    seen = []

    def objective(model_fn, batch):
        seen.append(len(batch[0]))
        return batch[0].float().mean(), {}

    batches = [(torch.full((2, 3), 1.0),), (torch.full((2, 3), 1.0),), (torch.full((1, 3), 7.0),)]
    rt = Runtime(torch.device("cpu"), 0, 1, 0, 1)
    assert evaluate(torch.nn.Identity(), batches, rt, no_autocast, objective) == pytest.approx(11 / 5)
    assert seen == [2, 2, 1]
