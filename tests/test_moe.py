"""MoE layer: matches a naive per-token reference, is dropless, balances, and has the presets' exact sizes."""

import pytest
import torch

import mai.model.moe as moe_mod
from mai.cli import main
from mai.model.config import ModelConfig
from mai.model.moe import MoE, grouped_swiglu, moe_aux_loss, moe_load, update_expert_bias
from mai.model.presets import count_params, get_preset
from mai.model.transformer import Transformer


def make_moe(score="softmax", shared=1, top_k=2, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_heads=4, n_kv_heads=4, n_experts=6, top_k=top_k, n_shared_experts=shared,
                      expert_ffn_dim=24, moe_score=score, **kw)
    layer = MoE(cfg)
    for p in layer.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    return layer


def naive(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """One token at a time: score every expert, take the top k, run each chosen expert alone."""
    out = []
    w1, w2, w3 = layer.experts.w1, layer.experts.w2, layer.experts.w3
    for tok in x.reshape(-1, x.shape[-1]):
        logits = layer.router.weight @ tok
        scores = logits.softmax(-1) if layer.score == "softmax" else logits.sigmoid()
        chosen = torch.topk(scores + layer.expert_bias, layer.top_k).indices
        gates = scores[chosen] / (scores[chosen].sum() if layer.top_k > 1 else 1.0)
        silu = torch.nn.functional.silu
        y = sum(g * (silu(tok @ w1[e]) * (tok @ w3[e])) @ w2[e] for g, e in zip(gates, chosen, strict=True))
        if layer.shared is not None:
            y = y + layer.shared(tok)
        out.append(y)
    return torch.stack(out).view(x.shape)


@pytest.mark.parametrize("score,shared,top_k", [("softmax", 1, 2), ("sigmoid", 0, 3), ("softmax", 0, 1)])
def test_matches_naive_per_token_reference(score, shared, top_k):
    layer = make_moe(score, shared, top_k)
    layer.expert_bias.copy_(torch.linspace(-0.2, 0.2, 6))  # the bias must change the choice, not the gates
    x = torch.randn(3, 7, 32)
    torch.testing.assert_close(layer(x), naive(layer, x), rtol=1e-5, atol=1e-5)


def test_dropless_load_counts_every_slot_and_gradients_reach_all_parts():
    layer = make_moe(moe_z_loss_coef=1e-3)
    x = torch.randn(4, 16, 32, requires_grad=True)
    (layer(x).square().mean() + layer.aux_loss).backward()
    assert int(layer.load.sum()) == 4 * 16 * 2  # every token reached both of its experts
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_grouped_mm_and_expert_loop_agree(monkeypatch):
    torch.manual_seed(0)
    x, w1, w3, w2 = torch.randn(20, 16), torch.randn(4, 16, 8), torch.randn(4, 16, 8), torch.randn(4, 8, 16)
    counts = torch.tensor([5, 0, 12, 3])
    exact = grouped_swiglu(x, counts, w1, w2, w3)  # fp32: the per-expert loop
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16: the grouped matmul (where torch has it)
        fast = grouped_swiglu(x, counts, w1, w2, w3)
    assert fast.dtype == torch.bfloat16
    monkeypatch.setattr(moe_mod, "_aligned", lambda *t: False)  # force the loop in bf16 too
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loop = grouped_swiglu(x, counts, w1, w2, w3)
    torch.testing.assert_close(fast, loop, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fast.float(), exact, rtol=0, atol=0.03 * float(exact.abs().max()))


def test_aux_loss_is_one_when_balanced_and_z_loss_adds():
    layer = make_moe(shared=0, moe_aux_loss_coef=1.0)
    torch.nn.init.zeros_(layer.router.weight)  # uniform scores: f_i · P_i sums to 1/E each
    layer.expert_bias.copy_(torch.tensor([0.0, 1, 2, 3, 4, 5]) * 1e-3)  # deterministic but uneven choice
    layer(torch.randn(2, 8, 32))
    assert layer.aux_loss.item() == pytest.approx(1.0)
    z = make_moe(shared=0, moe_aux_loss_coef=0.0, moe_z_loss_coef=1.0)
    z(torch.randn(2, 8, 32))
    assert z.aux_loss.item() > 0


def test_bias_update_moves_load_towards_balance():
    cfg = get_preset("moe-demo", vocab_size=64, n_layers=2, d_model=32, n_heads=2, n_kv_heads=2, ffn_dim=64,
                     expert_ffn_dim=16, moe_aux_loss_coef=0.0)
    torch.manual_seed(0)
    model = Transformer(cfg)
    router = model.layers["1"].feed_forward.router
    router.weight.data[0] += 0.5  # expert 0 is favoured by a wide margin
    tokens = torch.randint(0, 64, (8, 32))
    model(tokens)
    first = moe_load(model)
    assert first.shape == (1, 8) and int(first.sum()) == 8 * 32 * 2
    for _ in range(200):
        model(tokens)
        update_expert_bias(model, moe_load(model), rate=0.01)
    last = moe_load(model)
    assert last.max() - last.min() < first.max() - first.min()
    assert "layers.1.feed_forward.expert_bias" in model.state_dict()  # resumes route the same way
    assert float(moe_aux_loss(model)) == 0.0


@pytest.mark.parametrize("preset", ["moe-demo", "mai-1-moe"])
def test_module_has_exactly_the_preset_counts(preset):
    cfg = get_preset(preset)
    with torch.device("meta"):
        model = Transformer(cfg)
    total = sum(p.numel() for p in model.parameters())
    experts = sum(m.experts.w1.numel() * 3 for m in model.modules() if isinstance(m, MoE))
    active = total - experts * (cfg.n_experts - cfg.top_k) // cfg.n_experts
    size = count_params(cfg)
    assert (total, active) == (size.total, size.active)
    if preset == "mai-1-moe":
        assert (total, active) == (503_272_928_256, 33_275_999_232)


def test_model_info_prints_total_and_active(capsys):
    assert main(["model", "info", "--preset", "mai-1-moe"]) == 0
    out = capsys.readouterr().out
    assert "503,272,928,256" in out and "33,275,999,232" in out


def test_moe_demo_trains():
    cfg = get_preset("moe-demo", vocab_size=64, n_layers=2, d_model=32, n_heads=2, n_kv_heads=2, ffn_dim=64,
                     expert_ffn_dim=16, moe_z_loss_coef=1e-3)
    torch.manual_seed(0)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens = torch.randint(0, 64, (4, 33))
    losses = []
    for _ in range(30):
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        (loss + moe_aux_loss(model)).backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


def test_load_counter_is_a_buffer_that_follows_the_module():
    """On CUDA the per-step load is added to tensors on the GPU: it must live where the module lives."""
    layer = make_moe()
    assert "load" in dict(layer.named_buffers()) and "load" not in layer.state_dict()  # not saved
    layer(torch.randn(2, 5, 32))
    assert int(layer.load.sum()) == 2 * 5 * layer.top_k
    layer.to("meta")
    assert layer.load.device.type == "meta" and layer.expert_bias.device.type == "meta"
    layer.to_empty(device="cpu")
    layer.reset_buffers()
    assert not layer.load.any() and not layer.expert_bias.any()
