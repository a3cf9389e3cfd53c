"""``ArchetypeDataset``: RecBole's ``SequentialDataset`` plus frozen archetype features.

Like UniSRec's text-feature data set, it reads the feature file after RecBole has built its
id maps and aligns it by item token (:mod:`recbole_genair.data.features`).  It also counts
item co-occurrence in the users' *training* sequences (the last two interactions of each
user, the leave-one-out valid and test items, are held out), in internal ids.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset

from recbole_genair.archetypes.prompt import how_to_make_features
from recbole_genair.data.cooccurrence import cooccurrence_counts
from recbole_genair.data.features import FeatureFileError, align_by_token, read_feature_file
from recbole_genair.registry import UsageError

FEATURE_FIELDS = {"prefill": "prefill_emb", "decoding": "decoding_emb"}


def interaction_columns(dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(user ids, item ids, times)`` of a RecBole data set's interactions, in internal ids.

    Without a time field the row order stands for time; times are float32, as RecBole holds
    them after ``build()``.  ``inter_feat`` is a DataFrame until
    RecBole's ``build()`` and an ``Interaction`` after it; ``np.asarray`` reads both forms.
    A built sequential data set holds one row per *target* (RecBole's data augmentation:
    ``<i1> | i2``, ``<i1, i2> | i3``, ...), so each user's first item is only in the history
    list of the user's first row; it is put back, and the whole data set is returned.
    """
    feat = dataset.inter_feat
    users, items = np.asarray(feat[dataset.uid_field]), np.asarray(feat[dataset.iid_field])
    # times as RecBole orders and splits by them: float32 once built (ties keep file order), so
    # the co-occurrence holds out the same last items as RecBole's leave-one-out split
    time = (np.asarray(feat[dataset.time_field], dtype=np.float32) if dataset.time_field
            else np.arange(len(feat), dtype=np.float64))
    list_field = getattr(dataset, "item_id_list_field", None)
    if not (list_field and list_field in feat.columns):
        return users, items, time
    lengths = np.asarray(feat[dataset.item_list_length_field])
    order = np.lexsort((time, users))                     # augmentation order: by user, then time
    users, items, time, lengths = users[order], items[order], time[order], lengths[order]
    first = np.r_[True, users[1:] != users[:-1]]
    if not (lengths[first] == 1).all():
        raise ValueError("inter_feat is not RecBole's augmented sequence data: a user's first row "
                         "does not hold exactly one history item")
    lead_items = np.asarray(feat[list_field])[order[first], 0]
    if dataset.time_field:
        lead_time = np.asarray(feat[getattr(dataset, f"{dataset.time_field}_list_field")])[order[first], 0]
    else:
        lead_time = time[first] - 0.5                     # just before the user's first target
    users = np.concatenate([users[first], users])
    items = np.concatenate([lead_items, items])
    time = np.concatenate([lead_time, time])
    order = np.lexsort((np.r_[np.zeros(first.sum()), np.ones(len(first))], time, users))
    return users[order], items[order], time[order]


def default_feature_file(config) -> Path:
    return Path(config["data_path"]) / f"{config['dataset']}.archetype"


class MissingFeaturesError(FeatureFileError, UsageError):
    """The data set has no archetype feature file; the message says how to make one, or why
    none can be made (the command lines print it as one line)."""


class ArchetypeDataset(SequentialDataset):
    """Sequential data set carrying ``item_features`` ``{name: FloatTensor[item_num, d]}``."""

    def __init__(self, config):
        super().__init__(config)
        self.item_features = self._load_item_features(config)
        self.item_cooccurrence = self._training_cooccurrence()

    def _load_item_features(self, config) -> dict:
        names = list(config["genair_features"] or [])
        unknown = [n for n in names if n not in FEATURE_FIELDS]
        if not names or unknown:
            raise ValueError(f"genair_features must be a non-empty subset of {list(FEATURE_FIELDS)}, got {names}")
        path = Path(config["archetype_feature_file"] or default_feature_file(config))
        if not path.is_file():
            if config["archetype_feature_file"]:
                raise MissingFeaturesError(f"{path}: no such file (`archetype_feature_file`)")
            dataset = config["dataset"]
            hint = how_to_make_features(dataset, Path(config["data_path"]) / f"{dataset}.item")
            raise MissingFeaturesError(f"{path}: archetype features not found; {hint}")
        tokens, columns = read_feature_file(path, [FEATURE_FIELDS[n] for n in names])
        id2token = self.field2id_token[self.iid_field]
        return {n: torch.from_numpy(align_by_token(tokens, columns[FEATURE_FIELDS[n]], id2token, str(path)))
                for n in names}

    def _training_cooccurrence(self):
        return cooccurrence_counts(*interaction_columns(self), n_items=self.item_num,
                                   holdout=held_out_per_user(self.config))


def held_out_per_user(config) -> int:
    """Interactions per user RecBole's split holds out of training: its last 2 under
    ``LS: valid_and_test``, the last one under ``LS: valid_only`` / ``test_only``.

    The calibration counts co-occurrence in what is left; any other split (``RS``, a
    benchmark file) holds out other items, and counting them would leak valid/test pairs.
    """
    split = (config["eval_args"] or {}).get("split") or {}
    mode = split.get("LS") if list(split) == ["LS"] and not config["benchmark_filename"] else None
    if mode == "valid_and_test":
        return 2
    if mode in ("valid_only", "test_only"):
        return 1
    raise ValueError(f"eval_args split {split!r}"
                     + (f" with benchmark_filename {config['benchmark_filename']!r}" if config["benchmark_filename"] else "")
                     + ": GenAIR's data set counts item co-occurrence in each user's training sequence and "
                       "supports only RecBole's leave-one-out split (split: {LS: valid_and_test}, "
                       "valid_only or test_only)")
