"""Ray Data executor: the same shard tasks as the local pool, run as a Ray Dataset ``map`` on a cluster.

``ray.init()`` joins the cluster named by ``RAY_ADDRESS`` when it is set, else starts a local instance
with ``workers`` CPUs. Global (dedup) stages still run in the driver, shard by shard, exactly as locally;
every worker must see the same file system (a shared or network disk) for inputs, work dir and output.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from mai.data.pipeline.executor import MapShards
from mai.errors import MaiError


def ray_map(workers: int) -> MapShards:
    def map_shards(fn: Callable[[Any], Any], items: list[Any]) -> Iterable[Any]:
        if not items:
            return []
        try:
            import ray
            import ray.data  # noqa: F401
        except ImportError:  # ray, or ray.data's own dependencies (pandas)
            raise MaiError("the Ray executor needs Ray Data: pip install 'mai[data]'") from None
        if not ray.is_initialized():
            if os.environ.get("RAY_ADDRESS"):
                ray.init()
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        # tasks travel as JSON text: their nested, step-specific settings have no fixed Arrow schema
        ds = ray.data.from_items([{"task": json.dumps(t)} for t in items], override_num_blocks=len(items))
        rows = ds.map(lambda row: {"result": json.dumps(fn(json.loads(row["task"])))},
                      num_cpus=1, concurrency=min(workers, len(items))).take_all()
        return [json.loads(r["result"]) for r in rows]
    return map_shards
