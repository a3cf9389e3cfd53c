"""Which class implements ``--model`` (backbone) x ``--method`` (item representation).

``base`` is RecBole's own model unchanged.  Every other method registers a factory that
builds its subclass of the backbone; the runner never changes when a method is added.
The paper's ablations (Table 3) are methods too: GenAIR's model with settings fixed.
"""
from __future__ import annotations

import importlib
from typing import Dict

from recbole_genair.compat import recbole_builtin_model

BACKBONES = ("SASRec", "GRU4Rec", "BERT4Rec")

# method name -> module defining ``build(backbone_class) -> model class``
METHOD_MODULES: Dict[str, str] = {
    "base": "",
    "genair": "recbole_genair.model.genair",
    "llminit": "recbole_genair.model.baselines.llminit",
    "rlmrec": "recbole_genair.model.baselines.rlmrec",
    "alphafuse": "recbole_genair.model.baselines.alphafuse",
    "llmesr": "recbole_genair.model.baselines.llmesr",
    "llmemb": "recbole_genair.model.baselines.llmemb",
}


# Paper Table 3: GenAIR with one part removed -> (the method whose model it is, the settings it fixes).
# Runnable wherever a method is (``--method=``, the experiment runner's ``--methods=``), so
# the ablation table is one command; not part of the default method list.
ABLATIONS: Dict[str, tuple] = {
    "genair_wo_prefill": ("genair", {"genair_features": ["decoding"]}),
    "genair_wo_decoding": ("genair", {"genair_features": ["prefill"]}),
    "genair_wo_calibration": ("genair", {"calibration_alpha": 0.0}),
}


class UsageError(ValueError):
    """A choice that cannot work (the command lines print it as one line, no traceback)."""


class UnknownChoiceError(UsageError):
    """A model, method or data set name that does not exist; the message lists what does."""


def methods() -> list[str]:
    """The item representations compared in the paper's Table 2 (ablations excluded)."""
    return list(METHOD_MODULES)


def all_methods() -> list[str]:
    return [*METHOD_MODULES, *ABLATIONS]


def model_method(method: str) -> str:
    """The method whose model class ``method`` uses (itself, or an ablation's parent)."""
    return ABLATIONS[method][0] if method in ABLATIONS else method


def method_settings(method: str, config_dict=None) -> dict:
    """``config_dict`` with the settings an ablation fixes; setting one of them otherwise is an error."""
    config_dict = dict(config_dict or {})
    fixed = ABLATIONS[method][1] if method in ABLATIONS else {}
    clash = sorted(k for k in fixed if k in config_dict and config_dict[k] != fixed[k])
    if clash:
        raise UsageError(f"method {method} fixes {', '.join(f'{k}={fixed[k]!r}' for k in clash)}; "
                         f"it cannot be set to {', '.join(repr(config_dict[k]) for k in clash)}")
    return {**config_dict, **fixed}


def backbone_class(name: str):
    if name not in BACKBONES:
        raise UnknownChoiceError(f"unknown model {name!r}; choose one of: {', '.join(BACKBONES)}")
    return recbole_builtin_model(name)


_CACHE: Dict[tuple, type] = {}


def model_class(backbone: str, method: str = "base"):
    """The class for ``backbone`` under ``method`` (cached, so pickles find it by name)."""
    if method not in METHOD_MODULES and method not in ABLATIONS:
        raise UnknownChoiceError(f"unknown method {method!r}; choose one of: {', '.join(all_methods())}")
    method = model_method(method)
    base = backbone_class(backbone)
    if method == "base":
        return base
    key = (backbone, method)
    if key not in _CACHE:
        module = importlib.import_module(METHOD_MODULES[method])
        _CACHE[key] = module.build(base)
    return _CACHE[key]


def plugin_models() -> Dict[str, type]:
    """Every plugin class by name, e.g. ``GenAIRSASRec``."""
    out = {}
    for method in METHOD_MODULES:
        if method == "base":
            continue
        for backbone in BACKBONES:
            cls = model_class(backbone, method)
            out[cls.__name__] = cls
    return out


def get_model(name: str):
    """This package's models first, then RecBole's (RecBole's own ``get_model`` convention)."""
    found = plugin_models().get(name) or recbole_builtin_model(name)
    if found is None:
        raise UnknownChoiceError(f"`model_name` [{name}] is not a recbole-genair or RecBole model; "
                                 f"plugin models: {', '.join(sorted(plugin_models()))}")
    return found


def split_model_name(cls) -> tuple[str, str]:
    """``(backbone, method)`` of a model class."""
    return getattr(cls, "backbone", cls.__name__), getattr(cls, "method", "base")
