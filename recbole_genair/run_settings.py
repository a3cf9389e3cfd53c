"""What a training run's numbers depend on: its resolved settings.

A run's *resolved settings* are every key of its final configuration (all YAML layers and
package defaults), without the keys that cannot change its numbers or only say where it ran,
plus the content hash of each data file it reads.  The Table-2 runner keys finished cells by
them, Ray Tune sweeps record them, and a progress file refuses to resume under others.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from recbole_genair.data.dataset import default_feature_file

# Settings that cannot change a run's numbers; left out of the config hash.
NON_RESULT_KEYS = frozenset({"seed", "show_progress", "state", "checkpoint_dir", "torch_threads",
                             "log_wandb", "wandb_project", "progress_file"})
# Settings that say where or with what a run went, never what it computed (machine paths,
# devices, distributed set-up, evaluation batch size, log rounding); data files enter the
# resolved settings by content instead of by path.
LOCATION_KEYS = frozenset({"data_path", "archetype_feature_file", "config_files", "device", "gpu_id", "use_gpu",
                           "local_rank", "single_spec", "nproc", "world_size", "offset", "ip", "port", "worker",
                           "eval_batch_size", "loss_decimal_place", "llmemb_id_checkpoint"})
# Settings added after results were recorded, with the value that reproduces those results:
# at that value a key is left out of the resolved settings, so cells recorded before it
# existed stay current (and keep their progress files); any other value is a change.
NEUTRAL_NEW_KEYS = {"projector_dtype": "float32", "item_id_residual": False}


@functools.lru_cache(maxsize=64)
def _file_sha1(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_files(config) -> list[Path]:
    """The data files a cell's numbers depend on: the interactions, the archetype features for
    the methods that read them, and LLMEmb's pretrained ID checkpoint when it aligns to one."""
    files = [Path(config["data_path"]) / f"{config['dataset']}.inter"]
    if "genair_features" in config:
        files.append(Path(config["archetype_feature_file"] or default_feature_file(config)))
    if "llmemb_id_checkpoint" in config and config["llmemb_id_checkpoint"]:
        files.append(Path(config["llmemb_id_checkpoint"]))
    return files


def resolved_settings(config) -> dict:
    """``{key: repr(value)}`` of a cell's final configuration (every YAML layer resolved),
    without :data:`NON_RESULT_KEYS`, :data:`LOCATION_KEYS` and :data:`NEUTRAL_NEW_KEYS` at their
    neutral values, plus ``data:<file name>`` →
    SHA-1 of each of :func:`data_files` (``missing`` if absent)."""
    skip = NON_RESULT_KEYS | LOCATION_KEYS
    settings = {k: repr(v) for k, v in config.final_config_dict.items()
                if k not in skip and not (k in NEUTRAL_NEW_KEYS and v == NEUTRAL_NEW_KEYS[k])}
    for path in data_files(config):
        stat = path.stat() if path.is_file() else None
        settings[f"data:{path.name}"] = _file_sha1(str(path), stat.st_size, stat.st_mtime_ns) if stat else "missing"
    return settings


def settings_changes(old: dict, new: dict) -> list[str]:
    """``key: old → new`` for every resolved setting that differs (``–`` where absent)."""
    return [f"{k}: {old.get(k, '–')} → {new.get(k, '–')}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
