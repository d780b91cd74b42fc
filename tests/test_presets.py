"""Presets: the closed-form parameter counts equal the real module's, and the published sizes hold."""

import pytest
import torch

from mai.cli import main
from mai.model.presets import PRESETS, count_params, get_preset, train_flops_per_token
from mai.model.transformer import Transformer

PUBLISHED = {  # REFERENCES §1 and the model cards
    "135m": 134_515_008,
    "1b": 1_235_814_400,
    "8b": 8_030_261_248,
    "405b": 405_853_388_800,
    "mai-1-500b": 498_485_938_176,
    "mai-1-moe": 503_272_928_256,
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_formula_matches_module_on_meta_device(name):
    with torch.device("meta"):
        model = Transformer(PRESETS[name])
    assert sum(p.numel() for p in model.parameters()) == count_params(PRESETS[name]).total


@pytest.mark.parametrize("name,total", list(PUBLISHED.items()))
def test_published_sizes(name, total):
    assert count_params(PRESETS[name]).total == total


def test_mai_1_moe_active_parameters_and_flops():
    size = count_params(PRESETS["mai-1-moe"])
    assert size.active == 33_275_999_232
    dense = PRESETS["mai-1-500b"]
    # 6·N + 12·L·H·hd·T with N excluding the input embedding table
    n = count_params(dense).total - dense.vocab_size * dense.d_model
    assert train_flops_per_token(dense, 4096) == 6 * n + 12 * 120 * 144 * 128 * 4096


def test_mai_1_500b_splits_under_tp8():
    cfg = PRESETS["mai-1-500b"]
    assert (cfg.n_heads // 8, cfg.n_kv_heads // 8, cfg.ffn_dim // 8) == (18, 1, 7680)
    assert cfg.head_dim == 128 and not cfg.tie_embeddings


def test_model_info_cli_prints_exact_count(capsys):
    assert main(["model", "info", "--preset", "mai-1-500b"]) == 0
    out = capsys.readouterr().out
    assert "498,485,938,176" in out and "996,971,876,352 bytes" in out
    assert main(["model", "info", "--preset", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown preset 'nope'")


def test_get_preset_overrides():
    assert get_preset("demo", n_layers=2).n_layers == 2
