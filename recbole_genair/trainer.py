"""The paper's evaluation protocol on RecBole's trainer.

GenAIR (like LLM-ESR) ranks each user's held-out item against **100 sampled negatives**.
RecBole's ``uni100`` mode redraws negatives at every evaluation and scores candidates with
``predict`` row by row (about 100x slower than full ranking).  Here the negatives are drawn
**once per user** from ``eval_negatives_seed`` and the user token — uniformly among items
the user never interacted with — and reused for validation, test, every epoch and every
method.  Scoring reuses ``full_sort_predict`` and masks every non-candidate to ``-inf``, so
the 101-candidate protocol costs the same as full ranking and RecBole's own metrics apply
unchanged.  ``eval_negatives: 0`` switches to plain full ranking.

**Interrupted training resumes** (``progress_file``): after every validated epoch the
trainer replaces one file with everything the next epoch depends on — weights, optimizer,
early-stopping counters, best result and best-checkpoint path, the valid curve and every
random state (torch, numpy, Python, the training loader's shuffling generator).  A run
started with the same ``progress_file`` continues after the last saved epoch and ends with
the same weights and results as a run that was never interrupted; one whose training had
already finished goes straight to the test evaluation.  Its best checkpoint is named after the
progress file (``best_checkpoint_path``), and otherwise after the start time *and the process*
(RecBole: the start time only), so runs started in the same second in one ``checkpoint_dir``
never write over each other's.
"""
from __future__ import annotations

import os
import random
import statistics
import time
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from recbole.trainer import Trainer

from recbole_genair.compat import load_checkpoint, shared_dir, trusted_checkpoints
from recbole_genair.data.dataset import interaction_columns
from recbole_genair.distributed import agree, is_distributed, rank_file, set_up_trainer
from recbole_genair.run_settings import resolved_settings, settings_changes


def fixed_negatives(dataset, n_neg: int, seed: int) -> torch.Tensor:
    """``[user_num, n_neg]`` internal item ids; row 0 (padding user) is unused.

    Each user's draw depends only on ``seed`` and the user's *token*, so it is the same in
    every run and for every method that loads the same data.  Never drawn: any item of the
    user's in the whole data set (:func:`~recbole_genair.data.dataset.interaction_columns`).
    """
    users, items, _ = interaction_columns(dataset)
    return draw_negatives(users, items, dataset.user_num, dataset.item_num,
                          dataset.field2id_token[dataset.uid_field], n_neg, seed)


def draw_negatives(users: np.ndarray, items: np.ndarray, user_num: int, item_num: int, user_tokens,
                   n_neg: int, seed: int) -> torch.Tensor:
    """For each user ``1..user_num-1``, ``n_neg`` distinct items in ``1..item_num-1`` not paired with it."""
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    bounds = np.searchsorted(users, np.arange(user_num + 1))
    out = np.zeros((user_num, n_neg), dtype=np.int64)
    for uid in range(1, user_num):
        seen = np.unique(items[bounds[uid]:bounds[uid + 1]])
        n_free = item_num - 1 - len(seen)
        if n_free < n_neg:
            raise ValueError(f"user {user_tokens[uid]} has only {n_free} unseen items; cannot draw {n_neg} negatives")
        rng = np.random.default_rng([seed, zlib.crc32(str(user_tokens[uid]).encode())])
        picked = np.empty(0, dtype=np.int64)
        while len(picked) < n_neg:  # rejection sampling; terminates since n_free >= n_neg
            draw = rng.integers(1, item_num, size=2 * (n_neg + len(seen)))
            draw = draw[~np.isin(draw, seen)]
            picked = np.concatenate([picked, draw])
            _, first = np.unique(picked, return_index=True)
            picked = picked[np.sort(first)]
        out[uid] = picked[:n_neg]
    return torch.from_numpy(out)


def best_checkpoint_path(checkpoint_dir, progress_file) -> Path:
    """The best checkpoint of the run resumable from ``progress_file``: one per progress file.

    RecBole names it ``<model>-<start time>.pth``; two runs started in the same second in one
    ``checkpoint_dir`` (parallel seeds of one experiment) would share and overwrite it.
    """
    progress = Path(progress_file).resolve()
    return Path(checkpoint_dir) / f"{progress.stem}-{zlib.crc32(str(progress).encode()):08x}.pth"


class GenAIRTrainer(Trainer):
    """RecBole's ``Trainer`` with fixed sampled negatives and torch>=2.6 checkpoint loading."""

    def __init__(self, config, model):
        shared_dir(config["checkpoint_dir"])  # before RecBole's check-then-create (compat notes)
        distributed = is_distributed(config)
        config["single_spec"] = True  # RecBole's AbstractTrainer would wrap the model (CUDA only,
        try:                          # every buffer re-sent each step): set_up_trainer does, below
            super().__init__(config, model)
        finally:
            config["single_spec"] = not distributed
        if config["progress_file"]:
            self.saved_model_file = str(best_checkpoint_path(self.checkpoint_dir, config["progress_file"]))
        else:  # RecBole's "<model>-<start time>.pth" + the process id: runs started in one second differ
            stem = Path(self.saved_model_file).stem
            self.saved_model_file = str(Path(self.saved_model_file).with_name(f"{stem}-{os.getpid()}.pth"))
        if distributed:  # one best checkpoint (process 0's name), exact gathered metrics
            set_up_trainer(self, config)
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
        for epoch, score in self.valid_curve:  # a tie replaces the best, as in RecBole's early_stopping (>=)
            if best is None or (score >= best[1] if self.valid_metric_bigger else score <= best[1]):
                best = (epoch, score)
        return {"epochs_run": len(self.epoch_seconds), "best_epoch": None if best is None else best[0],
                "valid_curve": [round(score, 6) for _, score in self.valid_curve],
                "median_epoch_seconds": (round(statistics.median(self.epoch_seconds), 2)
                                         if self.epoch_seconds else None)}

    # ------------------------------------------------------------------ resumable training
    # Trainer attributes a progress file carries over (besides weights, optimizer and RNGs).
    RESUMED_ATTRIBUTES = ("cur_step", "best_valid_score", "best_valid_result", "saved_model_file",
                          "train_loss_dict", "epoch_seconds", "valid_curve")

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """RecBole's ``fit``; with ``progress_file`` set, resumed from and saved to that file."""
        progress = self.config["progress_file"]
        if not progress:
            return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        progress = rank_file(Path(progress), self.config)  # one file per process when distributed
        resumable = progress.is_file()
        if is_distributed(self.config):
            agree(resumable, f"whether to resume (a progress file {progress} and its .rank<N> copies)")
        if resumable and self._resume_progress(progress, train_data, need_best_file=saved):
            return self.best_valid_score, self.best_valid_result

        def after_validation(epoch_idx, valid_score):
            finished = self.cur_step > self.stopping_step or epoch_idx + 1 >= self.epochs
            self._save_progress(progress, epoch_idx, train_data, finished)
            if callback_fn:
                callback_fn(epoch_idx, valid_score)

        return super().fit(train_data, valid_data, verbose, saved, show_progress, after_validation)

    def _progress_settings(self) -> dict:
        """What the saved state was trained under: the seed and the resolved settings."""
        return {"seed": repr(self.config["seed"]), **resolved_settings(self.config)}

    def _save_progress(self, path: Path, epoch_idx: int, train_data, finished: bool) -> None:
        state = {"model": self.config["model"], "epoch": epoch_idx, "finished": finished,
                 "settings": self._progress_settings(),
                 **{key: getattr(self, key) for key in self.RESUMED_ATTRIBUTES},
                 "state_dict": self.model.state_dict(), "other_parameter": self.model.other_parameter(),
                 "optimizer": self.optimizer.state_dict(),
                 "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                         "python": random.getstate(), "loader": train_data.generator.get_state(),
                         # dropout on CUDA tensors draws from the devices' generators
                         "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save(state, partial)
        os.replace(partial, path)   # a kill leaves the previous epoch's file, never half of one

    def _resume_progress(self, path: Path, train_data, need_best_file: bool = True) -> bool:
        """Restore the state saved in ``path``; True when its training had already finished."""
        state = load_checkpoint(path, map_location=self.device)
        if state["model"] != self.config["model"]:
            raise ValueError(f"{path}: progress of {state['model']}, not of {self.config['model']}")
        if "settings" in state:   # files of earlier versions recorded none
            changes = settings_changes(state["settings"], self._progress_settings())
            if changes:
                raise ValueError(f"{path} was saved under other settings (saved → now: {'; '.join(changes)}); "
                                 "run with those, or delete it to train from scratch")
        if (need_best_file and state["best_valid_result"] is not None
                and not Path(state["saved_model_file"]).is_file()):
            raise FileNotFoundError(f"{path}: its best checkpoint {state['saved_model_file']} is gone; "
                                    f"delete {path} to train from scratch")
        if is_distributed(self.config):
            agree(state["epoch"], f"the last saved epoch of their progress files ({path} and its .rank<N> "
                                  f"copies: a process was stopped between two saves; delete them to restart)")
        self.model.load_state_dict(state["state_dict"])
        self.model.load_other_parameter(state["other_parameter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch = state["epoch"] + 1
        for key in self.RESUMED_ATTRIBUTES:
            setattr(self, key, state[key])
        # random states are CPU byte tensors, whatever map_location did to them
        torch.set_rng_state(state["rng"]["torch"].cpu())
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        train_data.generator.set_state(state["rng"]["loader"].cpu())
        cuda = state["rng"].get("cuda")
        if cuda is not None and torch.cuda.is_available():
            if len(cuda) != torch.cuda.device_count():
                raise ValueError(f"{path}: saved with {len(cuda)} CUDA device(s), {torch.cuda.device_count()} now")
            torch.cuda.set_rng_state_all([t.cpu() for t in cuda])
        self.logger.info(f"resumed from {path}: epoch {state['epoch']} done"
                         + ("; training had finished" if state["finished"] else f", continuing at {self.start_epoch}"))
        return bool(state["finished"])

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
        if is_distributed(self.config):
            torch.distributed.barrier()  # process 0 has written the best checkpoint
            self.eval_collector.n_rows = eval_data.sample_size
        with trusted_checkpoints():
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)

    def _map_reduce(self, result, num_sample):
        """Distributed: ``result`` already covers every process's users (``GatheringCollector``)."""
        return result

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
