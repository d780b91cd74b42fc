"""First loss of a model started from ``init_from`` weights under a memory cap:
``limited_load.py OUT.json LIMIT_MB MODEL_DIR [LAYOUT_JSON]`` — under torchrun with a layout (each rank
reads only its shards: mai.parallel.weights), or as one plain process without (``load_model``: the
whole model, which must run out of memory)."""

import json
import os
import sys

import torch
import torch.distributed as dist
from harness import SEQ, batch, limit_address_space

from mai.parallel import ParallelConfig, build_mesh, loss_context, parallelize
from mai.parallel.pipeline import pipeline_model
from mai.parallel.weights import materialize_from, open_weights
from mai.train.trainer import lm_loss


def first_loss(path: str, layout: dict, limit_mb: int) -> float:
    source = open_weights(path)
    world = int(os.environ["WORLD_SIZE"])
    pcfg = ParallelConfig(**layout).resolve(world)
    mesh = build_mesh(pcfg, world, "cpu", source.cfg)
    limit_address_space(limit_mb)
    tokens = batch()  # every data rank the whole batch: the loss is the global one on each
    x, y = tokens[:, :-1], tokens[:, 1:]
    cpu = torch.device("cpu")
    with torch.no_grad():
        if pcfg.pp > 1:
            pipe = pipeline_model(source.cfg, pcfg, mesh, cpu, len(x) // pcfg.pp_microbatches, SEQ,
                                  lambda module: materialize_from(module, source, cpu))
            losses = pipe.eval_losses(x, y)
            loss = torch.stack(losses).mean() if losses else torch.zeros(())
            dist.all_reduce(loss)  # one last stage per pipeline, the same loss on each
            return float(loss) / (world // pcfg.pp)
        with torch.device("meta"):
            from mai.model.transformer import Transformer

            model = Transformer(source.cfg)
        vocab_parallel = pcfg.tp > 1
        parallelize(model, pcfg, mesh, vocab_parallel_loss=vocab_parallel)
        materialize_from(model, source, cpu)
        with loss_context(vocab_parallel):
            return float(lm_loss(model, (x, y))[0])


def alone(path: str, limit_mb: int) -> float:
    from mai.interop import load_model

    limit_address_space(limit_mb)
    model = load_model(path).model
    with torch.no_grad():
        return float(lm_loss(model, (batch()[:, :-1], batch()[:, 1:]))[0])


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, limit, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    loss = first_loss(path, json.loads(sys.argv[4]), limit) if len(sys.argv) > 4 else alone(path, limit)
    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(out + ".tmp", "w") as f:
            json.dump(loss, f)
        os.replace(out + ".tmp", out)
    if dist.is_initialized():
        dist.destroy_process_group()
