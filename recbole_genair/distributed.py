"""Training on several processes: RecBole's own multi-GPU path, and the same on CPUs.

    python run_recbole_genair.py --model=SASRec --dataset=Amazon_Beauty --nproc=4
    python run_recbole_genair.py ... --nproc=8 --world_size=16 --ip=HOST0 --port=5678 --group_offset=8   # node 2 of 2

RecBole 1.2.1 runs one process per GPU (``recbole.quick_start.run`` with ``nproc``): each
process joins a ``torch.distributed`` group, the training and evaluation loaders split the
users among the processes (``DistributedSampler``; the training batch is divided by the
world size, so the global batch stays ``train_batch_size``) and the trainer all-reduces the
gradients.  This package starts the processes the same way (:func:`spawn`) with its own
config, models and trainer, and adds what RecBole's path lacks:

* **CPU processes** (gloo) when CUDA is absent — RecBole's path is NCCL-only.  Several CPU
  machines, or a test on this one, run the same code as a GPU cluster.
* **Exact evaluation.**  RecBole averages each process's metrics weighted by its number of
  batches; ``DistributedSampler`` also pads the last users up to a multiple of the world size
  by repeating the first ones.  :class:`GatheringCollector` gathers every process's per-user
  top-k rows instead, drops the padding and evaluates them in the single-process order, so a
  distributed evaluation gives exactly the single-process metrics of the same weights.
* **One best checkpoint** for all processes (RecBole names it after each process's start
  time, so the others can miss it), loaded only after process 0 has written it.
* **Resumable**: with ``progress_file`` each process keeps its own progress file
  (:func:`rank_file`); a run resumes only when every process saved the same epoch.
* **Constant buffers sent once** (:func:`set_up_trainer`), not re-sent at every training
  step as DDP's defaults in RecBole's set-up do: the epoch of two CPU processes went from 1.38x
  to 1.62x one process's on ml-100k (``bench/bench_distributed.py``, ``bench/RESULTS.md``).

The calibration loss pairs the target items of each process's share of the batch (with
``nproc`` processes, ``train_batch_size / nproc`` items per share).  The checkpoint folder
must be shared by all processes (it is, on one machine).
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from recbole.evaluator import Collector

from recbole_genair.registry import UsageError

# Settings RecBole's distributed set-up reads (``recbole.quick_start.run``'s arguments).
LAUNCH_KEYS = ("nproc", "world_size", "ip", "port", "offset")


def is_distributed(config) -> bool:
    return not config["single_spec"]


def launches_processes(nproc: int, world_size: int) -> bool:
    """Whether ``run``'s launch arguments ask for spawned processes (``nproc < 1`` too, so that
    :func:`spawn` rejects it instead of one process running)."""
    return nproc != 1 or world_size > 0


def free_port(host: str = "127.0.0.1") -> str:
    """A port on ``host`` free at the moment of asking (for a one-machine group)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return str(probe.getsockname()[1])


def check_launch(config) -> None:
    """A setting that asks for processes nobody started is an error, not a single-process run."""
    nproc = config["nproc"]
    if nproc is not None and int(nproc) > 1 and not is_distributed(config):
        raise UsageError(f"nproc: {nproc} in the settings starts no processes by itself; launch with "
                         f"`python run_recbole_genair.py --nproc={nproc} ...` "
                         f"(or recbole_genair.quick_start.run(..., nproc={nproc}))")


def check_gpus(config, nproc: int) -> None:
    """With CUDA, RecBole gives process ``r`` the ``r``-th id of ``gpu_id``: one per process."""
    if config["use_gpu"] and torch.cuda.is_available():
        ids = [g for g in str(config["gpu_id"]).split(",") if g.strip()]
        if len(ids) < nproc:
            raise UsageError(f"--nproc={nproc} runs one process per GPU, but gpu_id lists {len(ids)} "
                             f"({config['gpu_id']!r}); pass e.g. --gpu_id={','.join(map(str, range(nproc)))}")


def spawn(target, args: tuple, nproc: int, world_size: int = -1, ip: str = "localhost", port: str = "5678",
          group_offset: int = 0, config_dict: Optional[dict] = None):
    """Run ``target(config_dict=..., *args)`` in ``nproc`` processes; process 0's return value.

    As ``recbole.quick_start.run``: ``world_size`` (default ``nproc``) counts the processes
    of all machines, ``group_offset`` is the global rank of this machine's first process.
    """
    import torch.multiprocessing as mp
    if nproc < 1:
        raise UsageError(f"nproc must be >= 1, got {nproc}")
    world_size = nproc if world_size == -1 else world_size
    if world_size < nproc + group_offset:
        raise UsageError(f"world_size {world_size} < nproc {nproc} + group_offset {group_offset}")
    settings = {**(config_dict or {}), "world_size": world_size, "ip": ip, "port": str(port),
                "nproc": nproc, "offset": group_offset}
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_run_rank, args=(target, args, settings, queue), nprocs=nproc, join=True)
    return None if queue.empty() else queue.get()


def _run_rank(rank: int, target, args: tuple, settings: dict, queue) -> None:
    result = target(*args, config_dict={**settings, "local_rank": rank})
    if rank == 0:  # every process ends with the same (gathered) metrics
        queue.put(result)


def group_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def init_cpu_group(final: dict) -> None:
    """Join the process group over gloo on CPU (``Config._init_device`` when CUDA is absent)."""
    dist.init_process_group(backend="gloo", rank=final["local_rank"] + final["offset"],
                            world_size=final["world_size"], init_method=f"tcp://{final['ip']}:{final['port']}")
    final["device"] = torch.device("cpu")
    final["single_spec"] = False
    if final["local_rank"] != 0:  # as RecBole: only the first process of a machine logs
        final["state"] = "error"
        final["show_progress"] = False
        final["verbose"] = False


def as_single_process(config) -> None:
    """A distributed run's saved ``config``, set to load and evaluate in this one process."""
    final = config.final_config_dict
    if final.get("single_spec", True):
        return
    for key in ("local_rank", *LAUNCH_KEYS):
        final.pop(key, None)
    final["single_spec"] = True
    final["device"] = torch.device("cuda" if final["use_gpu"] and torch.cuda.is_available() else "cpu")


def finish(config) -> None:
    if is_distributed(config) and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(value):
    """Process 0's ``value`` in every process."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_file(path: Path, config) -> Path:
    """This process's own copy of ``path`` (process 0 keeps the name itself)."""
    rank = group_rank() if is_distributed(config) else 0
    return path if rank == 0 else path.with_name(f"{path.name}.rank{rank}")


def agree(value, what: str):
    """``value``, after checking that every process holds the same one."""
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise RuntimeError(f"the processes disagree on {what}: {values}")
    return value


class GatheringCollector(Collector):
    """RecBole's ``Collector`` whose data, in a distributed run, holds every process's users.

    ``DistributedSampler`` (no shuffling for evaluation) hands process ``r`` the positions
    ``r, r + W, r + 2W, ...`` of the padded user list, so interleaving the gathered rows
    restores the single-process order and the first ``n_rows`` rows drop the padding.
    """

    n_rows: Optional[int] = None   # the evaluation loader's sample count, set before each evaluation

    def get_data_struct(self):
        struct = super().get_data_struct()
        world = dist.get_world_size()
        for key in list(struct._data_dict):
            if not key.startswith("rec."):
                continue  # data.*: training-set statistics, the same in every process
            local = struct._data_dict[key].to(self.device).contiguous()  # NCCL gathers on the GPU
            parts = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(parts, local)  # equal row counts: the sampler pads
            rows = torch.stack(parts, dim=1).reshape(world * local.shape[0], *local.shape[1:])
            struct._data_dict[key] = rows[:self.n_rows].cpu()
        return struct


def set_up_trainer(trainer, config) -> None:
    """Distributed parts of ``GenAIRTrainer.__init__`` (RecBole's ``Trainer.__init__`` ran as
    for one process, so the model is wrapped here, once).

    RecBole wraps with DDP's defaults, for one CUDA device per process only.  Here CPU
    processes are wrapped too, and with ``forward_sync_buffers=False``: DDP would otherwise copy
    process 0's buffers to the others at every training step, and this package's buffers are
    large and constant — the frozen archetype features, the calibration co-occurrence table
    (11 MB dense on ml-100k), LLM-ESR's user histories — built identically in every process
    from the same files.  Parameters and buffers are still copied from process 0 once, when the
    wrapper is built.
    """
    from torch.nn.parallel import DistributedDataParallel
    cuda = config["device"].type == "cuda"
    if cuda:  # as RecBole
        trainer.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(trainer.model)
    trainer.distributed_model = DistributedDataParallel(
        trainer.model, device_ids=[config["local_rank"]] if cuda else None, forward_sync_buffers=False)
    trainer.eval_collector = GatheringCollector(config)
    trainer.saved_model_file = broadcast(trainer.saved_model_file)
