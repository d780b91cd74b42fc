"""torchrun entry point: run the named layouts and write each one's losses as JSON (rank 0).

Usage: torchrun --nproc-per-node N tests/parallel/worker.py OUT.json NAME=LAYOUT_JSON ...
A layout's ``n_layers`` key (not a layout setting) sets the tiny model's depth (default 2).
"""

import json
import sys

import torch
import torch.distributed as dist
from harness import tiny, train_losses

if __name__ == "__main__":
    torch.set_num_threads(1)
    results = {}
    for spec in sys.argv[2:]:
        name, layout = spec.split("=", 1)
        layout = json.loads(layout)
        moe = name.startswith("moe")
        results[name] = train_losses(moe, layout, tiny(moe, layout.pop("n_layers", 2)))
    if dist.get_rank() == 0:
        with open(sys.argv[1] + ".tmp", "w") as f:
            json.dump(results, f)
        import os

        os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    dist.destroy_process_group()
