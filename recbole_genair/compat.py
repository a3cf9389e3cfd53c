"""Every shim RecBole 1.2.1 needs on today's torch / numpy / Ray, in one place.

The dependency set is pinned in ``setup.py`` (numpy<2, pandas<3, ray[tune]==2.6.3,
setuptools<81, pyarrow<20) so RecBole itself runs unmodified; what remains is:

* **torch >= 2.6 ``weights_only``**: RecBole checkpoints pickle the whole ``Config`` (and
  ``Interaction`` objects), so ``torch.load`` with the new default refuses them.  Our trainer
  and ``load_data_and_model`` load them through :func:`load_checkpoint`, which opts out of
  ``weights_only`` explicitly — only for checkpoint files this package wrote itself.
* **RecBole's Ray objective** (``recbole.quick_start.objective_function``) reports *test*
  metrics and calls ``tune.report`` in a form newer Ray rejects; the package's own
  trainable in :mod:`recbole_genair.tune` replaces it (validation metrics per epoch).
* **Known deprecation noise**: RecBole's trainer builds ``torch.cuda.amp.GradScaler`` (torch
  deprecates that spelling, same object); its data set calls ``df[col].fillna(inplace=True)``
  (pandas 2.x still fills the frame, only pandas 3 would not; ``pandas<3`` is pinned).
  :func:`quiet_recbole_deprecations` hides exactly these ``FutureWarning``s, raised from
  RecBole's own modules, so every run's log stays readable (``quick_start.create_dataset``
  installs the filters, so ``run``, the tuner and ``load_data_and_model`` all get them);
  nothing else is filtered.
* **numpy aliases**: RecBole's metrics still use ``np.float`` (gone since numpy 1.24); its
  ``Config.__init__`` puts the aliases back (``compatibility_settings``), but a checkpoint's
  unpickled ``Config`` does not run it, so in a fresh process ``load_data_and_model`` then
  ``evaluate`` raised ``AttributeError: module 'numpy' has no attribute 'float'``.
  ``quick_start.load_data_and_model`` calls it.
* **``get_model`` import side effects**: RecBole's lookup walks ``exlib_recommender``, which
  imports lightgbm/xgboost; :func:`recbole_builtin_model` looks only in the submodules that
  hold RecBole's PyTorch models.
* **Directory races between processes**: RecBole creates ``./log/<model>/`` (its
  ``init_logger``) and the checkpoint directory (its ``Trainer``) with check-then-``makedirs``;
  two runs started in the same moment (two experiment processes on one ``--out``) crashed
  here with ``FileExistsError: './log/GRU4Rec'``.  :func:`shared_dir` creates a directory
  with ``exist_ok`` before RecBole looks: :func:`init_logger` for the log directory,
  ``GenAIRTrainer`` for the checkpoint directory.
* **Autograd anomaly detection switched on at import**: RecBole 1.2.1's
  ``recbole/model/sequential_recommender/sine.py`` calls
  ``torch.autograd.set_detect_anomaly(True)`` at module level, so importing any of RecBole's
  sequential models (the package's ``__init__`` imports SINE) turns it on for the whole
  process.  Every autograd node then records a Python stack trace in the forward pass and
  every backward output is checked for NaN: a training step of every model here, base
  RecBole's included, ran 1.6-2.1x slower for it (``bench/bench_anomaly_mode.py``).  It
  changes no number.  This module imports RecBole's sequential models once and puts the
  switch back where it was before that import (off unless the caller had turned it on; if
  something imported them before this package, RecBole's "on" is undone).  To debug a NaN,
  call ``torch.autograd.set_detect_anomaly(True)`` after importing this package.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch

RECBOLE_MODEL_SUBMODULES = ("sequential_recommender", "general_recommender",
                            "context_aware_recommender", "knowledge_aware_recommender")
RECBOLE_ANOMALY_MODULE = "recbole.model.sequential_recommender.sine"


def import_recbole_sequential_models() -> None:
    """Import RecBole's sequential models without keeping SINE's process-wide anomaly switch."""
    before = torch.is_anomaly_enabled() if RECBOLE_ANOMALY_MODULE not in sys.modules else False
    importlib.import_module("recbole.model.sequential_recommender")
    torch.autograd.set_detect_anomaly(before)


import_recbole_sequential_models()


def load_checkpoint(path, map_location: Optional[str | torch.device] = "cpu") -> dict:
    """Load a RecBole checkpoint (a pickled dict with the Config); trusted local files only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    return torch.load(path, map_location=map_location, weights_only=False)


def recbole_builtin_model(name: str):
    """RecBole's model class ``name`` or ``None`` (no lightgbm/xgboost imports)."""
    for submodule in RECBOLE_MODEL_SUBMODULES:
        module_path = f"recbole.model.{submodule}.{name.lower()}"
        if importlib.util.find_spec(module_path) is not None:
            module = importlib.import_module(module_path)
            return getattr(module, name, None)
    return None


@contextlib.contextmanager
def trusted_checkpoints():
    """Within the block, ``torch.load`` reads RecBole checkpoints (``weights_only=False``).

    RecBole's trainer calls ``torch.load`` itself (``evaluate``, ``resume_checkpoint``); this
    restores the pre-2.6 behaviour for exactly those calls on files this package wrote.
    """
    original = torch.load

    def _load(f, map_location=None, **kwargs):
        kwargs.setdefault("weights_only", False)
        return original(f, map_location=map_location, **kwargs)

    torch.load = _load
    try:
        yield
    finally:
        torch.load = original


# (message regex, module regex) of FutureWarnings RecBole 1.2.1 raises on current torch/pandas
RECBOLE_DEPRECATIONS = (
    (r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated", r"recbole\.trainer\.trainer"),
    (r"A value is trying to be set on a copy of a DataFrame or Series through chained assignment",
     r"recbole\.data\.dataset\.dataset"),
)


def quiet_recbole_deprecations() -> None:
    """Hide the known, harmless FutureWarnings RecBole's own code raises (see module doc)."""
    for message, module in RECBOLE_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning, module=module)


def shared_dir(path) -> None:
    """Create ``path`` unless it exists, whoever else is creating it at the same moment."""
    os.makedirs(path, exist_ok=True)


def init_logger(config) -> None:
    """RecBole's ``init_logger``, safe when several runs start at once (see the module notes)."""
    from recbole.utils import init_logger as recbole_init_logger
    shared_dir(os.path.join("log", config["model"]))
    recbole_init_logger(config)
