"""The config system: YAML + dotted overrides into typed dataclasses, with clear errors."""

import pytest

from mai.config import load_yaml, resolve
from mai.errors import MaiError
from mai.train.config import RunConfig
from mai.train.schedule import lr_at


def test_overrides_types_and_nested_lists(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  max_steps: 50\noptim:\n  lr: 1e-3\n")
    cfg = resolve(RunConfig, load_yaml(path), ["train.batch_size=4", "data.sources=[{path: a, weight: 2}]",
                                               "model.n_layers=3", "optim.betas=[0.9, 0.99]"])
    assert cfg.train.max_steps == 50 and cfg.optim.lr == 1e-3 and cfg.train.batch_size == 4
    assert cfg.data.sources[0].path == "a" and cfg.data.sources[0].weight == 2.0
    assert cfg.optim.betas == (0.9, 0.99)
    assert cfg.model_config().n_layers == 3


@pytest.mark.parametrize("override,message", [
    ("train.bogus=1", "unknown config key 'config.train.bogus'"),
    ("train.max_steps=ten", "expected an integer"),
    ("train.precision=fp16", "not one of"),
    ("model.n_heads=3", "not divisible"),
    ("model.preset=huge", "unknown preset"),
    ("data.seq_len=100000", "exceeds model.max_seq_len"),
    ("nokeyvalue", "key=value"),
])
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(MaiError, match=message):
        resolve(RunConfig, {}, [override]).validate()


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(MaiError, match="not valid YAML"):
        load_yaml(bad)
    with pytest.raises(MaiError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_schedules():
    cfg = resolve(RunConfig, {}, ["optim.lr=1.0", "optim.min_lr_ratio=0.1", "optim.warmup_steps=10"]).optim
    assert lr_at(0, 100, cfg) == pytest.approx(0.1) and lr_at(9, 100, cfg) == pytest.approx(1.0)
    assert lr_at(99, 100, cfg) == pytest.approx(0.1, abs=1e-3)
    assert lr_at(55, 100, cfg) == pytest.approx(0.55)  # cosine midpoint: (1 + 0.1) / 2
    cfg.schedule = "wsd"
    assert lr_at(79, 100, cfg) == 1.0 and lr_at(90, 100, cfg) == pytest.approx(0.55)
