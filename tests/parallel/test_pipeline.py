"""Pipeline parallel reproduces one process: real torchrun processes on CPU (gloo) split a tiny dense
and a tiny MoE model into stages (1F1B, interleaved 1F1B, zero bubble), alone and with FSDP or TP, and
train it for 3 AdamW steps with gradient clipping over all stages. Each step's cross-entropy and MoE
aux loss must equal one process that accumulates gradients over the same micro-batches (the MoE balance
loss depends on which tokens share a micro-batch). Through `mai train`, a checkpoint saved with pp 2
resumes with pp 1 and pp 4 on the loss curve of the run that never stopped, and the final export
gathered stage by stage equals `mai checkpoint export` of the checkpoint. Bad pipeline layouts fail
with one error before any process group exists."""

from __future__ import annotations

import shutil

import pytest
import torch.distributed as dist
from safetensors.torch import load_file

from mai.errors import MaiError
from mai.parallel import ParallelConfig, build_mesh
from mai.train.logger import read_metrics
from tests.train.conftest import dataset, mai  # noqa: F401  (dataset is a fixture)

from .harness import GLOBAL_BATCH, tiny, train_losses
from .test_parallel import assert_same, torchrun
from .test_resharding import final_val_loss, losses, train

INTERLEAVED = {"pp_schedule": "interleaved_1f1b", "pp_virtual_stages": 2, "n_layers": 4}


def reference(name: str, layout: dict, world: int) -> list[list[float]]:
    """One process on the micro-batches the layout's ranks see."""
    pcfg = ParallelConfig(**{k: v for k, v in layout.items() if k != "n_layers"}).resolve(world)
    moe = name.startswith("moe")
    dp = pcfg.dp_shard * pcfg.dp_replicate
    return train_losses(moe, None, tiny(moe, layout.get("n_layers", 2)), micro=pcfg.pp_microbatches, dp=dp)


@pytest.mark.slow
def test_two_stages_1f1b_interleaved_and_zero_bubble_match_one_process(tmp_path):
    layouts = {
        "dense-pp2": {"pp": 2},
        "moe-pp2": {"pp": 2, "pp_microbatches": 4},
        "dense-pp2-interleaved": {"pp": 2, **INTERLEAVED},
        "moe-pp2-interleaved": {"pp": 2, **INTERLEAVED},
        "dense-pp2-zbv": {"pp": 2, "pp_schedule": "zbv", "pp_virtual_stages": 2, "n_layers": 4},
        "moe-pp2-interleaved-zb": {"pp": 2, "pp_schedule": "interleaved_zb", "pp_virtual_stages": 2,
                                   "n_layers": 4},
    }
    got = torchrun(tmp_path, 2, layouts)
    for name, layout in layouts.items():
        assert_same(got[name], reference(name, layout, 2))
    assert got["moe-pp2"][0][1] > 0  # the aux loss is really in play (and reaches the first stage)


@pytest.mark.slow
def test_four_ranks_pp_with_fsdp_tp_and_four_stages_match_one_process(tmp_path):
    layouts = {
        "dense-pp2dp2": {"pp": 2},
        "moe-pp2dp2": {"pp": 2, "activation_checkpointing": "full"},
        "dense-pp2tp2": {"pp": 2, "tp": 2},
        "moe-pp2tp2": {"pp": 2, "tp": 2},
        "moe-pp2dp2-interleaved": {"pp": 2, **INTERLEAVED},
        "moe-pp2ep2": {"pp": 2, "ep": 2},
        "dense-pp4": {"pp": 4, "n_layers": 4},
    }
    got = torchrun(tmp_path, 4, layouts)
    for name, layout in layouts.items():
        assert_same(got[name], reference(name, layout, 4))


@pytest.mark.parametrize("layout,world,layers,message", [
    ({"pp": 2}, 2, 3, "n_layers 3 is not divisible into parallel.pp 2 × pp_virtual_stages 1 = 2 pipeline"),
    ({"pp": 2, **INTERLEAVED, "n_layers": 2}, 2, 2, "n_layers 2 is not divisible into parallel.pp 2 × "
                                                       "pp_virtual_stages 2 = 4"),
    ({"pp": 4, "pp_microbatches": 2}, 4, 4, "pp_microbatches 2 is below parallel.pp 4"),
    ({"pp": 2, "tp": 2}, 6, 2, "world size 6 is not divisible by pp 2 × dp_replicate 1 × tp 2"),
    ({"pp": 2, "dp_shard": 2, "tp": 2}, 4, 2, "mesh pp 2 × dp_replicate 1 × dp_shard 2 × tp 2 = 8 does "
                                               "not match the world size 4"),
    ({"pp": 2, "pp_virtual_stages": 2}, 2, 4, "1f1b runs one stage per rank, but pp_virtual_stages is 2"),
    ({"pp": 2, "pp_schedule": "interleaved_1f1b"}, 2, 4, "needs parallel.pp_virtual_stages of at least 2"),
    ({"pp": 2, "pp_schedule": "zbv"}, 2, 4, "zbv runs exactly 2 stages per rank"),
    ({"pp": 4, **INTERLEAVED, "n_layers": 8, "pp_microbatches": 9}, 4, 8,
     "pp_microbatches 9 is not a multiple of its 2 rounds of pp 4"),
    ({"pp": 2, "pp_schedule": "zbv", "pp_virtual_stages": 2}, 4, 4, "zero bubble\\) runs only with pipeline"),
])
def test_bad_pipeline_layouts_fail_before_any_process_group(layout, world, layers, message):
    layout = {k: v for k, v in layout.items() if k != "n_layers"}
    with pytest.raises(MaiError, match=message):
        build_mesh(ParallelConfig(**layout), world, "cpu", tiny(False, layers))
    assert not dist.is_initialized()


def test_pipeline_needs_untied_embeddings():
    import dataclasses

    with pytest.raises(MaiError, match="pipeline parallel needs untied embeddings"):
        build_mesh(ParallelConfig(pp=2), 2, "cpu", dataclasses.replace(tiny(False), tie_embeddings=True))
    assert not dist.is_initialized()


PIPE = ["model.n_layers=4", f"train.global_batch={GLOBAL_BATCH}"]


@pytest.mark.slow
def test_pp2_checkpoint_resumes_with_pp1_and_pp4_and_exports_stage_by_stage(dataset, tmp_path):  # noqa: F811
    """MoE, micro-batches of one sequence under every layout: pp 2 runs 4 per schedule step, pp 1 one
    process accumulating 4, pp 4 four ranks with 4 per schedule step."""
    full = tmp_path / "pp2"
    train(dataset, full, 2, *PIPE, "train.batch_size=1", "parallel.pp=2", "parallel.pp_microbatches=4")
    reference_losses = losses(full)
    assert len(reference_losses) == 6
    loads = [r["expert_load"] for r in read_metrics(full) if "expert_load" in r]
    assert loads and len(loads[0]) == 3 and all(sum(row) > 0 for row in loads[0])  # every stage's layers
    for nproc, extra in ((1, []), (4, ["parallel.pp=4", "parallel.pp_microbatches=4"])):
        run = tmp_path / f"resumed_{nproc}"
        shutil.copytree(full, run)
        shutil.rmtree(run / "checkpoints" / "step_00000006")  # as if killed after the step-3 checkpoint
        train(dataset, run, nproc, *PIPE, "train.batch_size=1", *extra)
        assert losses(run) == pytest.approx(reference_losses, abs=1e-5), nproc
        assert final_val_loss(run) == pytest.approx(final_val_loss(full), abs=1e-5), nproc

    exported = tmp_path / "export"
    mai("checkpoint", "export", str(full), str(exported))
    mine = load_file(str(exported / "model.safetensors"))
    trainers = load_file(str(full / "model" / "model.safetensors"))
    assert mine.keys() == trainers.keys() and any(k.startswith("layers.3.") for k in mine)
    assert all((mine[k] == trainers[k]).all() for k in mine)
