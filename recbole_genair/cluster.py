"""Connecting to Ray: a running cluster by address, or a local Ray started for this job.

Both Ray users — the Tune sweeps (:mod:`recbole_genair.tune`) and the archetype step's
``--ray_address`` workers (:mod:`recbole_genair.archetypes.pipeline`) — start Ray here, so a
local Ray always gets the same settings.
"""
from __future__ import annotations

import os
from typing import Optional

LOCAL = "local"  # ``--ray_address=local``: start a Ray on this machine instead of joining one


def init_ray(ray_address: Optional[str], num_cpus: Optional[int] = None) -> bool:
    """Connect to ``ray_address`` or start a local Ray; True when this call started it.

    ``None`` or ``"local"`` starts Ray here with ``num_cpus`` (default: every core).
    """
    import ray
    if ray.is_initialized():
        return False
    if ray_address and ray_address != LOCAL:
        ray.init(address=ray_address, log_to_driver=False)
    else:
        # Workers' own logs stay out of the driver's console (log_to_driver=False); progress
        # and failures come back through results.  Ray runs its workers at nice 15; with every
        # core busy that made a Tune trial's epoch 19x slower than in-process
        # (bench/bench_ray_niceness.py), so local workers compete on equal terms with the
        # machine's other work.
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                 _system_config={"worker_niceness": 0})
    return True


def nodes_not_seeing(path) -> list[str]:
    """Alive nodes of the connected Ray on which ``path`` does not exist (their IP addresses).

    A zero-CPU task pinned to each node checks the path there, so a busy cluster still
    answers.  Ray 2.6 no longer copies files written on a worker node to the head node:
    anything the driver and the trials share (a sweep's ``--out``) must be on storage every
    node mounts at the same path."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def exists(p: str) -> bool:
        return os.path.exists(p)

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probes = [exists.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
              .remote(str(path)) for n in nodes]
    return [n["NodeManagerAddress"] for n, seen in zip(nodes, ray.get(probes)) if not seen]
