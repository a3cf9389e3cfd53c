"""Small readers for RecBole atomic files, used outside RecBole's own loader."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def read_inter_columns(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(user_idx, item_idx, timestamp, item_tokens)`` from a ``.inter`` file.

    Users and items are numbered 0.. in order of first appearance; ``item_tokens[k]`` is
    the token of item index ``k``.  Rows keep the file order (ties in time stay stable).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such interaction file")
    header = pd.read_csv(path, sep="\t", nrows=0).columns.tolist()
    names = {h.split(":")[0]: h for h in header}
    for required in ("user_id", "item_id", "timestamp"):
        if required not in names:
            raise ValueError(f"{path}: header lacks {required} (has {header})")
    frame = pd.read_csv(path, sep="\t", usecols=[names["user_id"], names["item_id"], names["timestamp"]],
                        dtype={names["user_id"]: str, names["item_id"]: str, names["timestamp"]: float})
    users, _ = pd.factorize(frame[names["user_id"]])
    items, item_tokens = pd.factorize(frame[names["item_id"]])
    return (users.astype(np.int64), items.astype(np.int64),
            frame[names["timestamp"]].to_numpy(np.float64), np.asarray(item_tokens, dtype=str))
