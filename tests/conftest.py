"""Shared fixtures: real data converted into a temporary data root, small fast settings."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from recbole_genair.data.converters import convert
from recbole_genair.paths import DATASET_DIR, SHARED_DATA_DIR

# Small settings that keep one RecBole epoch on ml-100k to seconds on 2 CPU cores.
FAST = {
    "epochs": 1, "hidden_size": 32, "inner_size": 64, "embedding_size": 32,
    "MAX_ITEM_LIST_LENGTH": 20, "train_batch_size": 512, "eval_batch_size": 4096,
    "show_progress": False, "state": "WARNING", "torch_threads": 1, "n_layers": 1,
    "learning_rate": 0.003,
}


KEEP_LAST = 20  # interactions kept per user in the test copy of ml-100k (18,860 rows)


def keep_last_per_user(inter: Path, keep: int) -> None:
    """Shrink a converted ``.inter`` file to each user's last ``keep`` interactions in time."""
    frame = pd.read_csv(inter, sep="\t", dtype=str)
    time_col = next(c for c in frame.columns if c.startswith("timestamp"))
    user_col = next(c for c in frame.columns if c.startswith("user_id"))
    frame["_t"] = frame[time_col].astype(float)
    frame = frame.sort_values([user_col, "_t"], kind="stable").groupby(user_col, sort=False).tail(keep)
    frame.drop(columns="_t").to_csv(inter, sep="\t", index=False)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """ml-100k converted from the recbole wheel, cut to each user's last 20 interactions so a
    RecBole epoch takes seconds, with the committed archetype features beside it."""
    root = tmp_path_factory.mktemp("data")
    convert("ml-100k", out_dir=root, progress=False)
    keep_last_per_user(root / "ml-100k" / "ml-100k.inter", KEEP_LAST)
    committed = DATASET_DIR / "ml-100k"
    shutil.copy(committed / "ml-100k.archetype", root / "ml-100k" / "ml-100k.archetype")  # committed
    return root


@pytest.fixture()
def fast_config(data_root, tmp_path) -> dict:
    """``config_dict`` for a quick run on ``data_root`` with checkpoints in a temp dir."""
    return dict(FAST, data_path=str(data_root), checkpoint_dir=str(tmp_path / "saved"))


def shared_data_or_skip(name: str) -> Path:
    path = SHARED_DATA_DIR / name
    if not path.is_dir():
        pytest.skip(f"{path} is not available on this machine")
    return path
