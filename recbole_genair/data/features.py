"""Frozen item-feature tables aligned to RecBole's internal item ids *by token*.

A feature file is a RecBole atomic file keyed by ``item_id:token`` with one or more
``float_seq`` columns (the archetype step writes ``prefill_emb`` and ``decoding_emb``).
Rows are matched to ``dataset.field2id_token[item_id]``, never by position: rows for items
the data set does not contain are ignored (and counted), and an item of the data set
without a row is an error, not a zero vector.  Row 0 (RecBole's padding id) is zero.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

logger = logging.getLogger(__name__)


class FeatureFileError(ValueError):
    """A feature file that is missing, malformed, or does not cover the data set."""


def read_feature_file(path: Path, fields: Sequence[str]) -> tuple[list[str], Dict[str, np.ndarray]]:
    """``(tokens, {field: [rows, dim] float32})`` for the requested ``float_seq`` fields."""
    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"{path}: feature file not found")
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        names = [h.split(":")[0] for h in header]
        if names[0] != "item_id":
            raise FeatureFileError(f"{path}:1: first column must be item_id:token, got {header[0]!r}")
        missing = [f for f in fields if f not in names]
        if missing:
            raise FeatureFileError(f"{path}:1: no column(s) {missing}; the file has {names[1:]}")
        cols = [names.index(f) for f in fields]
        tokens: list[str] = []
        values: Dict[str, list] = {f: [] for f in fields}
        for lineno, line in enumerate(fh, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(names):
                raise FeatureFileError(f"{path}:{lineno}: expected {len(names)} columns, got {len(parts)}")
            tokens.append(parts[0])
            for f, c in zip(fields, cols):
                values[f].append(parts[c])
    out = {}
    for f in fields:
        try:
            rows = [np.array(v.split(), dtype=np.float32) for v in values[f]]
        except ValueError as exc:
            raise FeatureFileError(f"{path}: column {f} has a non-numeric value ({exc})") from exc
        dims = {len(r) for r in rows}
        if len(dims) > 1:
            raise FeatureFileError(f"{path}: column {f} has rows of different lengths {sorted(dims)}")
        out[f] = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
    return tokens, out


def align_by_token(tokens: Sequence[str], matrix: np.ndarray, id2token: Sequence[str], source: str) -> np.ndarray:
    """``[len(id2token), dim]`` with row ``k`` = the feature of item ``id2token[k]``; row 0 zero."""
    position = {t: i for i, t in enumerate(tokens)}
    if len(position) != len(tokens):
        raise FeatureFileError(f"{source}: duplicate item tokens")
    index = np.full(len(id2token), -1, dtype=np.int64)
    for item_id, token in enumerate(id2token):
        if item_id == 0:
            continue
        index[item_id] = position.get(str(token), -1)
    absent = [str(id2token[i]) for i in range(1, len(id2token)) if index[i] < 0]
    if absent:
        raise FeatureFileError(f"{source}: no feature row for {len(absent)} item(s) of the data set, "
                               f"e.g. {absent[:10]}; regenerate the features for this data set")
    extra = len(tokens) - (len(id2token) - 1)
    if extra:
        logger.info("%s: %d feature rows for items outside the data set were ignored", source, extra)
    table = np.zeros((len(id2token), matrix.shape[1]), dtype=np.float32)
    table[1:] = matrix[index[1:]]
    return table
