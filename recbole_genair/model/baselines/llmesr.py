"""LLM-ESR: dual-view modelling + retrieval-augmented self-distillation (``--method=llmesr``).

Liu et al., "LLM-ESR: Large Language Models Enhancement for Long-tailed Sequential
Recommendation" (NeurIPS 2024); reference code ``models/DualLLMSRS.py``, ``models/LLMESR.py``.

*Dual-view modelling* (paper §3.2):

* semantic view — the frozen LLM item embeddings through a trainable adapter,
  ``e_i^se = Adapter(x_i)`` (reference: ``Linear(d, d/2) → Linear(d/2, h)``);
* collaborative view — trainable ID embeddings ``e_i^co``, initialised with the
  PCA-reduced LLM embeddings, unscaled by default (reference: ``pca64_itm_emb_np.pkl``;
  ``llmesr_id_std``);
* sequence-level fusion — two-way cross-attention between the views' embedded sequences
  (``llm2id``/``id2llm``, queries from one view, keys and values from the other, padding
  masked; on in the paper's scripts, ``--use_cross_att``);
* one *shared* sequence encoder ``f_θ`` (the backbone) encodes both views, and
  logit-level fusion scores ``P(i|S) = [u^co ; u^se]·[e_i^co ; e_i^se]ᵀ`` with
  ``u^v = f_θ(S^v)``.

*Retrieval-augmented self-distillation* (paper §3.3): each user's ``N`` most similar users
by LLM user representation (cosine) are retrieved once; their sequences, encoded by the
model itself without gradient, give the guide ``ū = 1/N·Σ_k u_k``, and
``L = L_rec + α·||u - sg(ū)||²`` (MSE, the scripts' ``--user_sim_func kd``; reference
defaults ``α = 0.1``, ``N = 10``).

Implementation on RecBole's backbones: :class:`DualViewEmbedding` replaces the backbone's
``item_embedding``; :meth:`LLMESRMixin.forward` runs the backbone's own ``forward`` once
per view (the embedding serves that view's fused sequence) and concatenates the outputs, so
the backbone's loss, ``predict`` and ``full_sort_predict`` score ``[u^co ; u^se]`` against
the concatenated table ``[e^co ; e^se]`` unchanged (BERT4Rec: plus its output bias; its
mask token is a trainable row in both views).

Simplifications (documented):

* the LLM *user* representation is the mean of the prefill embeddings of the user's
  training items (the paper embeds a prompt of the user's history with the LLM);
* the neighbour's sequence is their latest training input (as in the reference code).  The
  reference trains on each user's full sequence, so it distils once per user and epoch;
  RecBole trains on every prefix (Amazon_Beauty: 5.9 samples per user).  By default
  (``llmesr_distill_on: latest``) only the samples whose input *is* the user's latest
  training input are distilled, as in the reference: the recommendation loss still sees
  every prefix, and the neighbour encodings per epoch are the reference's ``users × N``,
  not ``samples × N``.  ``all_prefixes`` distils every sample (the student ``u`` is then
  each prefix's representation).  For BERT4Rec both are read at an appended mask token,
  as RecBole's BERT4Rec predicts;
* cross-attention acts on the item embeddings, before the backbone adds positions
  (the reference SASRec applies it after its scaling, position and dropout step);
* the reference's optional item-level contrastive regulariser (``--item_reg``, off in the
  scripts) is not included;
* **width**: each view is as wide as the backbone (``hidden_size``), so items and users are
  scored in ``2·hidden_size`` dimensions, twice the other methods'.  The reference's scripts
  run each view at ``--hidden_size 64`` (``pca64_itm_emb_np.pkl``), i.e. the concatenation
  is as wide as a single-view model; ``--hidden_size=<h/2>`` (with ``inner_size`` to match)
  reproduces that.  The default gives LLM-ESR the larger model;
* the adapter's hidden width is ``max(d/2, h)`` (:func:`llm_adapter`), and the adapter and
  cross-attention keep PyTorch's initialisation (the reference ``xavier_normal_``-s every
  parameter).

Inference runs the shared encoder once per view (inherent to the method); both item
tables and their concatenation are cached in eval mode.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender import BERT4Rec
from torch import nn

from recbole_genair.model.baselines.common import (BaselineMixin, adapted_llm_table, define_models,
                                                   pca_item_table, pca_scale)
from recbole_genair.model.layers import CachedTable


DISTILL_ON = ("latest", "all_prefixes")


class CrossAttention(nn.Module):
    """Multi-head attention, queries from one view, keys/values from the other (``Multi_CrossAttention``)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"item width {width} is not divisible by llmesr_heads={heads}")
        self.heads = heads
        self.query = nn.Linear(width, width, bias=False)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width, bias=False)
        self.output = nn.Linear(width, width)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """``queries``, ``keys``: ``[B, L, h]``; ``padding``: ``[B, L]`` True at padding positions."""
        batch, length, width = queries.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

        q, k, v = split(self.query(queries)), split(self.key(keys)), split(self.value(keys))
        scores = q @ k.transpose(-1, -2) / (width // self.heads) ** 0.5
        scores = scores.masked_fill(padding[:, None, None, :], -1e9)
        attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, width)
        return self.output(attended)


class DualViewEmbedding(CachedTable):
    """``[e^co ; e^se]`` as one item table; serves one view's sequence inside the encoder."""

    def __init__(self, collaborative: nn.Embedding, semantic: nn.Module, cross_attention: bool, heads: int):
        super().__init__()
        self.collaborative, self.semantic = collaborative, semantic
        width = collaborative.embedding_dim
        self.num_embeddings, self.embedding_dim = collaborative.num_embeddings, 2 * width
        self.id_from_llm = CrossAttention(width, heads) if cross_attention else None  # reference llm2id
        self.llm_from_id = CrossAttention(width, heads) if cross_attention else None  # reference id2llm
        self._served: Optional[tuple] = None

    def compute_table(self) -> torch.Tensor:
        return torch.cat([self.collaborative.weight, self.semantic.weight], dim=-1)

    def views(self, item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The collaborative and semantic embedded sequences, fused by cross-attention."""
        co, se = self.collaborative(item_seq), self.semantic(item_seq)
        if self.id_from_llm is not None:
            padding = item_seq == 0
            co, se = self.id_from_llm(se, co, padding), self.llm_from_id(co, se, padding)
        return co, se

    @contextlib.contextmanager
    def serve(self, item_seq: torch.Tensor, embedded: torch.Tensor) -> Iterator[None]:
        """Within the block, looking ``item_seq`` up returns ``embedded`` (one view)."""
        self._served = (item_seq, embedded)
        try:
            yield
        finally:
            self._served = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self._served is not None and ids is self._served[0]:
            return self._served[1]
        return self.weight[ids]

    @contextlib.contextmanager
    def step(self, sparse: bool = False) -> Iterator[torch.Tensor]:
        """Always dense: both views' tables are computed once per step (``sparse`` ignored)."""
        with self.semantic.step(), super().step() as table:
            yield table


def training_histories(dataset, seq_field: str, len_field: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's latest training input ``[user_num, L]`` and its length (0: no training sample).

    RecBole's training samples are every prefix of a user's training sequence; the longest
    one's input is the sequence before the last training item (the reference's ``inter[:-1]``).
    """
    feat = dataset.inter_feat
    users = feat[dataset.uid_field].numpy()
    lengths = feat[len_field].numpy()
    order = np.lexsort((lengths, users))
    last = order[np.r_[users[order][1:] != users[order][:-1], True]] if len(order) else order
    seqs = torch.zeros(dataset.user_num, feat[seq_field].shape[1], dtype=torch.long)
    lens = torch.zeros(dataset.user_num, dtype=torch.long)
    seqs[users[last]] = feat[seq_field][last]
    lens[users[last]] = feat[len_field][last]
    return seqs, lens


def user_llm_profiles(dataset, features: torch.Tensor, seq_field: str, len_field: str) -> torch.Tensor:
    """``[user_num, d]``: mean LLM embedding of each user's training items (zero without any)."""
    feat = dataset.inter_feat
    users = torch.as_tensor(feat[dataset.uid_field]).long()
    targets = torch.as_tensor(feat[dataset.iid_field]).long()
    first = torch.as_tensor(feat[len_field]) == 1  # the sample whose input is the first item
    items = torch.cat([targets, torch.as_tensor(feat[seq_field])[first, 0].long()])
    owners = torch.cat([users, users[first]])
    sums = torch.zeros(dataset.user_num, features.shape[1]).index_add_(0, owners, features[items])
    counts = torch.zeros(dataset.user_num).index_add_(0, owners, torch.ones(len(owners)))
    return sums / counts.clamp_min(1.0)[:, None]


def nearest_users(profiles: torch.Tensor, candidates: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """``[user_num, k]``: each user's ``k`` most cosine-similar other users among ``candidates``."""
    n_users = profiles.shape[0]
    k = min(k, int(candidates.sum()) - 1)
    if k < 1:
        raise ValueError("LLM-ESR needs at least two users with training sequences")
    normed = F.normalize(profiles, dim=1)
    out = torch.zeros(n_users, k, dtype=torch.long)
    for start in range(0, n_users, chunk):
        stop = min(start + chunk, n_users)
        sim = normed[start:stop] @ normed.T
        sim[:, ~candidates] = -float("inf")
        rows = torch.arange(stop - start)
        sim[rows, rows + start] = -float("inf")  # not oneself
        out[start:stop] = sim.topk(k, dim=1).indices
    return out


class LLMESRMixin(BaselineMixin):
    """LLM-ESR: dual-view (LLM + ID) shared-encoder model with retrieval-augmented self-distillation."""

    method = "llmesr"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        features = self.llm_features(config, dataset)
        collaborative = self.item_embedding
        with torch.no_grad():
            collaborative.weight.copy_(pca_item_table(features, collaborative.weight,
                                                      pca_scale(config["llmesr_id_std"], "llmesr_id_std")))
        self.item_embedding = DualViewEmbedding(collaborative, adapted_llm_table(features, collaborative),
                                                bool(config["llmesr_cross_attention"]), int(config["llmesr_heads"]))
        self.distill_weight = float(config["llmesr_alpha"] or 0.0)
        self.distill_latest_only = self.config_choice(config, "llmesr_distill_on", DISTILL_ON) == "latest"
        seqs, lens = training_histories(dataset, self.ITEM_SEQ, self.ITEM_SEQ_LEN)
        self.register_buffer("history", seqs, persistent=False)
        self.register_buffer("history_len", lens, persistent=False)
        profiles = user_llm_profiles(dataset, features, self.ITEM_SEQ, self.ITEM_SEQ_LEN)
        self.register_buffer("neighbours", nearest_users(profiles, lens > 0, int(config["llmesr_neighbors"])),
                             persistent=False)
        self._last_forward: Optional[tuple] = None

    def forward(self, item_seq: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        """``[u^co ; u^se]``: the backbone's encoder run once per view."""
        outputs = []
        for embedded in self.item_embedding.views(item_seq):
            with self.item_embedding.serve(item_seq, embedded):
                outputs.append(super().forward(item_seq, *args))
        output = torch.cat(outputs, dim=-1)
        self._last_forward = (item_seq, output) if self.training else None
        return output

    def sequence_representation(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """``u = f_θ(S)`` as the backbone predicts from it (BERT4Rec: at an appended mask token)."""
        if isinstance(self, BERT4Rec):  # RecBole's reconstruct_test_data, vectorised
            masked = F.pad(item_seq, (0, 1)).scatter(1, item_seq_len[:, None], self.mask_token)[:, 1:]
            return self.gather_indexes(self.forward(masked), item_seq_len - 1)
        return self.forward(item_seq, item_seq_len)

    def student_representation(self, interaction, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The batch's ``u`` (of ``rows`` only, when given); SASRec/GRU4Rec reuse the encoding
        their loss has just computed."""
        item_seq = interaction[self.ITEM_SEQ]
        last, self._last_forward = self._last_forward, None
        if last is not None and last[0] is item_seq:
            return last[1] if rows is None else last[1][rows]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        if rows is not None:
            item_seq, item_seq_len = item_seq[rows], item_seq_len[rows]
        return self.sequence_representation(item_seq, item_seq_len)

    def latest_inputs(self, interaction) -> torch.Tensor:
        """Indices of the batch samples whose input is their user's latest training input."""
        same = (interaction[self.ITEM_SEQ] == self.history[interaction[self.USER_ID]]).all(dim=1)
        return same.nonzero().squeeze(1)  # equal padded sequences have equal lengths (item ids > 0)

    @torch.no_grad()
    def neighbour_guide(self, users: torch.Tensor) -> torch.Tensor:
        """``ū = 1/N·Σ_k f_θ(S_k)`` over each user's retrieved neighbours (no gradient)."""
        unique, inverse = torch.unique(self.neighbours[users], return_inverse=True)
        encoded = self.sequence_representation(self.history[unique], self.history_len[unique])
        return encoded[inverse].mean(dim=1)

    def distillation_loss(self, interaction) -> torch.Tensor:
        """``||u - sg(ū)||²`` (mean squared error, the reference's ``kd``) over the distilled samples.

        A batch without any sample to distil (``latest``: none is a user's latest input)
        contributes an exact zero that still belongs to the graph.
        """
        users = interaction[self.USER_ID]
        rows = self.latest_inputs(interaction) if self.distill_latest_only else None
        if rows is not None and rows.numel() == 0:
            self._last_forward = None
            return self.item_embedding.collaborative.weight.sum() * 0.0
        student = self.student_representation(interaction, rows)
        guide = self.neighbour_guide(users if rows is None else users[rows])
        self._last_forward = None  # the guide's encodings are not a batch's
        return F.mse_loss(student, guide)

    def auxiliary_loss(self, interaction):
        if self.distill_weight <= 0:
            self._last_forward = None
            return None
        return self.distill_weight * self.distillation_loss(interaction)


MODELS = define_models(LLMESRMixin, "LLMESR", __name__)
LLMESRSASRec, LLMESRGRU4Rec, LLMESRBERT4Rec = MODELS["SASRec"], MODELS["GRU4Rec"], MODELS["BERT4Rec"]
build = MODELS.build
