"""The package's quick start: ``run`` one experiment, load a saved one.

Mirrors ``recbole.quick_start.run_recbole`` with the plugin's ``Config``, model registry,
data set class and trainer (fixed sampled negatives), so plain RecBole models and GenAIR
models run under exactly the same protocol.
"""
from __future__ import annotations

import logging
from functools import partial
from logging import getLogger
from pathlib import Path
from typing import Callable, Optional

import torch
from recbole.data import create_dataset as recbole_create_dataset
from recbole.data import data_preparation
from recbole.utils import get_environment, init_seed, set_color

from recbole_genair.compat import init_logger, load_checkpoint, quiet_recbole_deprecations
from recbole_genair.config import Config
from recbole_genair.data.converters import KNOWN_DATASETS
from recbole_genair.distributed import (as_single_process, check_gpus, check_launch, finish,
                                        launches_processes, spawn)
from recbole_genair.paths import DATASET_DIR
from recbole_genair.registry import UnknownChoiceError, UsageError, method_settings, model_class
from recbole_genair.trainer import GenAIRTrainer, fixed_negatives


def available_datasets() -> list[str]:
    return sorted(p.name for p in DATASET_DIR.iterdir() if p.is_dir() and (p / f"{p.name}.inter").is_file())


def check_dataset(config) -> None:
    """A one-line error for a data set that is not where ``config`` (every layer) looks for it."""
    name, folder = config["dataset"], Path(config["data_path"])
    if (folder / f"{name}.inter").is_file():
        return
    prepare = f"prepare it with `python -m recbole_genair.datasets {name}`"
    if folder.resolve() == (DATASET_DIR / name).resolve():
        known = ", ".join(available_datasets()) or "none yet"
        raise UnknownChoiceError(f"unknown dataset {name!r} (prepared: {known}); {prepare}")
    # e.g. run from another folder before preparing a known data set
    hint = f"; {prepare} (writes {DATASET_DIR / name})" if name in KNOWN_DATASETS else ""
    raise UnknownChoiceError(f"dataset {name!r}: no {name}.inter in {folder} (data_path){hint}")


def create_dataset(config):
    """The model's own data set class when it declares one (feature alignment), else RecBole's."""
    quiet_recbole_deprecations()
    klass = getattr(config.model_class, "dataset_class", None)
    return klass(config) if klass is not None else recbole_create_dataset(config)


def build_config(model: str = "SASRec", dataset: str = "ml-100k", method: str = "base",
                 config_file_list=None, config_dict=None) -> Config:
    klass = model_class(model, method)
    config_dict = method_settings(method, config_dict)  # an ablation's fixed settings
    config = Config(model=klass, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    method_settings(method, config.file_config_dict)  # nor in a YAML file (config_dict outranks files)
    check_dataset(config)
    check_launch(config)
    return config


def prepare(config: Config):
    """Seeded data set, loaders, model and trainer for ``config``."""
    init_seed(config["seed"], config["reproducibility"])
    if config["torch_threads"] and config["device"].type == "cpu":
        torch.set_num_threads(int(config["torch_threads"]))
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = config.model_class(config, train_data._dataset).to(config["device"])
    return dataset, (train_data, valid_data, test_data), model, make_trainer(config, model, dataset)


def make_trainer(config, model, dataset) -> GenAIRTrainer:
    """The trainer, with the fixed negatives of the *full* data set (history excluded)."""
    trainer = GenAIRTrainer(config, model)
    if config["eval_negatives"]:
        trainer.set_negatives(fixed_negatives(dataset, int(config["eval_negatives"]),
                                              int(config["eval_negatives_seed"])))
    return trainer


def run(model: str = "SASRec", dataset: str = "ml-100k", method: str = "base", config_file_list=None,
        config_dict=None, saved: bool = True, callback: Optional[Callable] = None, nproc: int = 1,
        world_size: int = -1, ip: str = "localhost", port: str = "5678", group_offset: int = 0) -> dict:
    """Train with early stopping on valid NDCG@10, then evaluate the best model on test.

    Returns RecBole's results plus ``epochs_run``, ``best_epoch`` (0-based), ``valid_curve``
    (the valid score of each validation) and ``median_epoch_seconds``.  ``nproc > 1`` (or
    ``world_size > 0``) trains on that many processes of this machine, as RecBole's ``run``
    (one per GPU; on CPUs when CUDA is absent): see :mod:`recbole_genair.distributed`.
    """
    if launches_processes(nproc, world_size):
        if callback is not None:
            raise UsageError("run(callback=...) needs one process (the callback cannot reach spawned ones)")
        check_gpus(build_config(model, dataset, method, config_file_list, config_dict), nproc)  # usage errors
        return spawn(partial(run, saved=saved), (model, dataset, method, config_file_list), nproc=nproc,
                     world_size=world_size, ip=ip, port=port, group_offset=group_offset, config_dict=config_dict)
    config = build_config(model, dataset, method, config_file_list, config_dict)
    try:
        return _run(config, model, method, dataset, saved, callback)
    finally:
        finish(config)


def _run(config, model: str, method: str, dataset: str, saved: bool, callback: Optional[Callable]) -> dict:
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    data, (train_data, valid_data, test_data), net, trainer = prepare(config)
    logger.info(data)
    logger.info(net)
    protocol = (f"{config['eval_negatives']} fixed sampled negatives per user" if config["eval_negatives"]
                else "full ranking")
    logger.info(set_color("evaluation protocol", "green") + f": {protocol}")
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, saved=saved,
                                                      show_progress=config["show_progress"],
                                                      callback_fn=callback)
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    environment_tb = get_environment(config)
    logger.info("The running environment of this training is as follows:\n" + environment_tb.draw())
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    return {"model": model, "method": method, "dataset": dataset,
            "best_valid_score": best_valid_score, "valid_score_bigger": config["valid_metric_bigger"],
            "best_valid_result": dict(best_valid_result or {}), "test_result": dict(test_result or {}),
            "saved_model_file": trainer.saved_model_file, "protocol": protocol, **trainer.training_summary()}


def load_data_and_model(model_file: str):
    """RecBole's ``load_data_and_model`` for this package's checkpoints (torch>=2.6 safe)."""
    checkpoint = load_checkpoint(model_file)
    config = checkpoint["config"]
    as_single_process(config)  # a checkpoint of a multi-process run loads into this one
    config.compatibility_settings()  # numpy aliases RecBole's metrics use (np.float): set when a
    #                                  Config is built, not when one is unpickled (see compat)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logging.getLogger().setLevel(logging.WARNING)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    net = config.model_class(config, train_data._dataset).to(config["device"])
    net.load_state_dict(checkpoint["state_dict"])
    net.load_other_parameter(checkpoint.get("other_parameter"))
    return config, net, dataset, train_data, valid_data, test_data
