"""The plugin's ``Config``: RecBole's configurator with this package's YAML layers.

Layers, lowest priority first:

1. RecBole's own defaults: ``overall.yaml``, its quick-start layer for sequential models,
   and the model YAML of every RecBole class the model inherits from (so a plugin
   subclass of SASRec keeps SASRec's ``n_layers``, and of BERT4Rec its ``transform``);
2. ``properties/overall.yaml`` — the paper's protocol and defaults;
3. ``properties/model/<Backbone>.yaml`` — per-backbone defaults (paper sizes);
4. ``properties/method/<method>.yaml`` — per-method defaults (GenAIR, baselines);
5. ``properties/dataset/<Dataset>.yaml`` — fields, lengths, prompt field map;
6. the user's ``config_file_list`` and ``config_dict`` (dict > files, as in RecBole).

Unlike RecBole's ``Config``, this one does not read ``sys.argv`` unless asked
(``command_line=True``): a script's own options, pytest's or a Ray worker's
(``--node-ip-address=...``) would otherwise leak into the configuration, ranked above
``config_dict``.  The command-line tools turn their ``--key=value`` arguments into
``config_dict`` with :func:`command_line_overrides`.

Data sets converted into the project's ``dataset/`` folder are read from there, also for
``ml-100k`` (which RecBole would otherwise force to its bundled copy).

The paper trains with CE, which RecBole requires to run without sampled training negatives
(``train_neg_sample_args: ~`` in ``properties/overall.yaml``).  ``--loss_type=BPR`` on its
own would then crash mid-epoch on a missing negative-item column, so a BPR run that names no
sampler gets RecBole's own default (``BPR_NEGATIVES``: one uniform negative per positive); it
shows in the configuration RecBole logs, and an explicit ``train_neg_sample_args`` wins.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch
from recbole.config import Config as RecBoleConfig
from recbole.utils import InputType, ModelType
from recbole.model.abstract_recommender import AbstractRecommender

from recbole_genair.distributed import init_cpu_group
from recbole_genair.paths import DATASET_DIR, PROPERTIES_DIR
from recbole_genair.registry import get_model, split_model_name

RECBOLE_PROPERTIES = Path(os.path.dirname(os.path.realpath(
    __import__("recbole.config.configurator", fromlist=["x"]).__file__))).parent / "properties"


# RecBole's overall.yaml default sampler, for BPR runs that name none (see the module doc).
BPR_NEGATIVES = {"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False, "candidate_num": 0}


def recbole_ancestors(model_class) -> list:
    """RecBole model classes ``model_class`` derives from, most generic first."""
    out = []
    for klass in reversed(model_class.__mro__):
        if (isinstance(klass, type) and issubclass(klass, AbstractRecommender)
                and klass.__module__.startswith("recbole.model.")
                and (RECBOLE_PROPERTIES / "model" / f"{klass.__name__}.yaml").is_file()):
            out.append(klass)
    return out


def plugin_layers(model_class, dataset: str) -> list[Path]:
    backbone, method = split_model_name(model_class)
    return [p for p in (PROPERTIES_DIR / "overall.yaml",
                        PROPERTIES_DIR / "model" / f"{backbone}.yaml",
                        PROPERTIES_DIR / "method" / f"{method}.yaml",
                        PROPERTIES_DIR / "dataset" / f"{dataset}.yaml") if p.is_file()]


def command_line_overrides(args: Iterable[str], exclude: Iterable[str] = ()) -> dict:
    """RecBole settings from ``--key=value`` arguments, converted as RecBole converts them.

    ``exclude``: a tool's own option names, skipped.  An argument that is not ``--key=value``
    with exactly one ``=`` raises ``ValueError`` (RecBole would log a warning and drop it, so
    ``--epochs 5`` would silently train the default number of epochs).
    """
    exclude = set(exclude)
    out: dict = {}
    bad = [arg for arg in args if not arg.startswith("--") or len(arg[2:].split("=")) != 2]
    if bad:
        raise ValueError(f"unrecognised argument(s) {bad}; RecBole settings are given as --key=value")
    for arg in args:
        key, value = arg[2:].split("=")
        if key in exclude:
            continue
        if key in out and out[key] != value:
            raise ValueError(f"--{key} given twice with different values")
        out[key] = value
    # RecBole's own str -> value conversion; it reads no instance state.
    return RecBoleConfig._convert_config_dict(None, out)


class Config(RecBoleConfig):
    """RecBole ``Config`` that knows this package's models, YAML layers and data folder.

    ``command_line=True`` also reads ``--key=value`` from ``sys.argv`` as RecBole does (above
    ``config_dict``); by default only the arguments are read (see the module doc).
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None,
                 command_line: bool = False):
        self.command_line = command_line
        super().__init__(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)

    def _load_cmd_line(self):
        return super()._load_cmd_line() if self.command_line else {}

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise KeyError("model must be given (argument, config file, config dict or --model=)")
        if isinstance(model, str):
            model = get_model(model)
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        for klass in recbole_ancestors(model_class):
            if klass.__name__ != model:
                self._update_internal_config_dict(RECBOLE_PROPERTIES / "model" / f"{klass.__name__}.yaml")
        for path in plugin_layers(model_class, dataset):
            config_dict = self._update_internal_config_dict(path)
            if path.parent.name == "dataset" and config_dict:
                self.parameters["Dataset"] += [k for k in config_dict if k not in self.parameters["Dataset"]]
        backbone, method = split_model_name(model_class)
        self.internal_config_dict.update({"backbone": backbone, "method": method})

    def _init_device(self):
        """RecBole's device set-up; a distributed run without CUDA joins a gloo group on CPU
        (RecBole's own distributed path is NCCL on GPUs only; see ``distributed``)."""
        final = self.final_config_dict
        if "local_rank" in final:
            gpu_id = final["gpu_id"]
            final["gpu_id"] = ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple) else str(gpu_id)
            os.environ["CUDA_VISIBLE_DEVICES"] = final["gpu_id"]  # as RecBole, before CUDA is queried
            if not (final["use_gpu"] and torch.cuda.is_available()):
                init_cpu_group(final)
                return
        super()._init_device()

    def _set_default_parameters(self):
        super()._set_default_parameters()
        user_path = self.external_config_dict.get("data_path")
        if user_path is not None:
            self.final_config_dict["data_path"] = os.path.join(user_path, self.dataset)
        elif (DATASET_DIR / self.dataset).is_dir():
            self.final_config_dict["data_path"] = str(DATASET_DIR / self.dataset)
        final = self.final_config_dict
        # this package's layer turns negative sampling off (CE); what trains on sampled
        # negatives gets RecBole's uniform sampler back: a sequential model with the BPR loss,
        # and a RecBole model of pairwise input (BPR, LightGCN, ...) reached through get_model
        sequential = final.get("MODEL_TYPE") == ModelType.SEQUENTIAL
        pairwise = getattr(self.model_class, "input_type", None) == InputType.PAIRWISE
        if (final.get("train_neg_sample_args") in (None, "None")
                and (final.get("loss_type") == "BPR" if sequential else pairwise)):
            final["train_neg_sample_args"] = dict(BPR_NEGATIVES)
