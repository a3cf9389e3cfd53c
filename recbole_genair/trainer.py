"""The paper's evaluation protocol on RecBole's trainer.

GenAIR (like LLM-ESR) ranks each user's held-out item against **100 sampled negatives**.
RecBole's ``uni100`` mode redraws negatives at every evaluation and scores candidates with
``predict`` row by row (about 100x slower than full ranking).  Here the negatives are drawn
**once per user** from ``eval_negatives_seed`` and the user token — uniformly among items
the user never interacted with — and reused for validation, test, every epoch and every
method.  Scoring reuses ``full_sort_predict`` and masks every non-candidate to ``-inf``, so
the 101-candidate protocol costs the same as full ranking and RecBole's own metrics apply
unchanged.  ``eval_negatives: 0`` switches to plain full ranking.
"""
from __future__ import annotations

import statistics
import time
import zlib
from typing import Optional

import numpy as np
import torch
from recbole.trainer import Trainer

from recbole_genair.compat import trusted_checkpoints


def fixed_negatives(dataset, n_neg: int, seed: int) -> torch.Tensor:
    """``[user_num, n_neg]`` internal item ids; row 0 (padding user) is unused.

    Each user's draw depends only on ``seed`` and the user's *token*, so it is the same in
    every run and for every method that loads the same data.
    """
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    users = dataset.inter_feat[uid_field].numpy()
    items = dataset.inter_feat[iid_field].numpy()
    n_items = dataset.item_num
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    bounds = np.searchsorted(users, np.arange(dataset.user_num + 1))
    tokens = dataset.field2id_token[uid_field]
    out = np.zeros((dataset.user_num, n_neg), dtype=np.int64)
    for uid in range(1, dataset.user_num):
        seen = np.unique(items[bounds[uid]:bounds[uid + 1]])
        n_free = n_items - 1 - len(seen)
        if n_free < n_neg:
            raise ValueError(f"user {tokens[uid]} has only {n_free} unseen items; cannot draw {n_neg} negatives")
        rng = np.random.default_rng([seed, zlib.crc32(str(tokens[uid]).encode())])
        picked = np.empty(0, dtype=np.int64)
        while len(picked) < n_neg:  # rejection sampling; terminates since n_free >= n_neg
            draw = rng.integers(1, n_items, size=2 * (n_neg + len(seen)))
            draw = draw[~np.isin(draw, seen)]
            picked = np.concatenate([picked, draw])
            _, first = np.unique(picked, return_index=True)
            picked = picked[np.sort(first)]
        out[uid] = picked[:n_neg]
    return torch.from_numpy(out)


class GenAIRTrainer(Trainer):
    """RecBole's ``Trainer`` with fixed sampled negatives and torch>=2.6 checkpoint loading."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.eval_negatives: Optional[torch.Tensor] = None
        self.epoch_seconds: list[float] = []           # wall time of each training epoch
        self.valid_curve: list[tuple[int, float]] = []  # (epoch, valid score) of each validation

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        started = time.perf_counter()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        self.epoch_seconds.append(time.perf_counter() - started)
        return loss

    def _valid_epoch(self, valid_data, show_progress=False):
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self.valid_curve.append((len(self.epoch_seconds) - 1, float(score)))
        return score, result

    def training_summary(self) -> dict:
        """Epochs trained, the best-valid epoch (as early stopping chose it), the valid curve, epoch time."""
        best = None
        for epoch, score in self.valid_curve:  # first strict improvement wins, as in RecBole's early_stopping
            if best is None or (score > best[1] if self.valid_metric_bigger else score < best[1]):
                best = (epoch, score)
        return {"epochs_run": len(self.epoch_seconds), "best_epoch": None if best is None else best[0],
                "valid_curve": [round(score, 6) for _, score in self.valid_curve],
                "median_epoch_seconds": (round(statistics.median(self.epoch_seconds), 2)
                                         if self.epoch_seconds else None)}

    def set_negatives(self, negatives: Optional[torch.Tensor]) -> None:
        self.eval_negatives = None if negatives is None else negatives.to(self.device)

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self.eval_negatives is not None:
            users = interaction[self.config["USER_ID_FIELD"]].to(self.device)
            keep = torch.zeros_like(scores, dtype=torch.bool)
            keep.scatter_(1, self.eval_negatives[users], True)
            keep[positive_u, positive_i] = True
            scores = scores.masked_fill(~keep, -np.inf)
        return interaction, scores, positive_u, positive_i

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        with trusted_checkpoints():
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)

    @torch.no_grad()
    def user_ranks(self, eval_data, top_k: int = 0) -> tuple[np.ndarray, ...]:
        """Each evaluated user's internal id, held-out item id and that item's 0-based rank.

        Same candidates and masking as :meth:`evaluate` (history removed; with fixed negatives,
        only the 101 candidates compete).  Rank = number of candidates scored strictly above the
        held-out item, so ``rank < k`` is RecBole's hit@k and ``1 / log2(rank + 2)`` its
        ndcg@k whenever scores are not tied at the cut-off.  ``top_k > 0`` also returns each
        user's ``top_k`` highest-scored candidate item ids, ``[n_users, top_k]``.
        """
        self.model.eval()
        self.tot_item_num = eval_data._dataset.item_num
        users, items, ranks, tops = [], [], [], []
        uid_field = self.config["USER_ID_FIELD"]
        for batched_data in eval_data:
            interaction, scores, positive_u, positive_i = self._full_sort_batch_eval(batched_data)
            positive_u, positive_i = positive_u.to(scores.device), positive_i.to(scores.device)
            target = scores[positive_u, positive_i].unsqueeze(1)
            ranks.append((scores[positive_u] > target).sum(1).cpu().numpy())
            users.append(interaction[uid_field].to(scores.device)[positive_u].cpu().numpy())
            items.append(positive_i.cpu().numpy())
            if top_k:
                tops.append(scores[positive_u].topk(top_k, dim=1).indices.cpu().numpy())
        out = (np.concatenate(users), np.concatenate(items), np.concatenate(ranks))
        return out + (np.concatenate(tops),) if top_k else out

    def resume_checkpoint(self, resume_file):
        with trusted_checkpoints():
            super().resume_checkpoint(resume_file)
