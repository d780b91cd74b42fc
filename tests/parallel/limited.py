"""Train :func:`harness.big_moe` under a memory cap: ``limited.py OUT.json LIMIT_MB [LAYOUT_JSON]``, under
torchrun with a layout, or as one plain process without (which must run out of memory)."""

import json
import os
import sys

import torch
import torch.distributed as dist
from harness import big_moe, train_losses

if __name__ == "__main__":
    torch.set_num_threads(1)
    layout = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    losses = train_losses(True, layout, big_moe(), limit_mb=int(sys.argv[2]))
    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(sys.argv[1] + ".tmp", "w") as f:
            json.dump(losses, f)
        os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    if dist.is_initialized():
        dist.destroy_process_group()
