"""LLMInit: LLM embeddings initialise a trainable ID item table (``--method=llminit``).

Harte et al., "Leveraging Large Language Models for Sequential Recommendation" (RecSys 2023),
the *LLM2Sequential* approach (LLM2BERT4Rec): the item embeddings of the sequential model
are initialised with the LLM embeddings of the items, reduced to the model's embedding size
by PCA, and then trained as ordinary ID embeddings with the model's usual objective.  The
same baseline ("LLMInit", semantic initialisation) appears in the AlphaFuse paper's
comparison (Hu et al., SIGIR 2025; its code's ``SI`` mode whitens the coordinates).

Here, at construction (:func:`~recbole_genair.model.baselines.common.pca_item_table`):

* ``E_0[i] = c·(x_i - μ)·V_k`` for every item ``i`` — the top ``k = min(width, rank)``
  principal coordinates of the prefill embeddings ``x_i`` (mean ``μ`` over the items);
  ``llminit_std: raw`` (default) keeps them unscaled, ``c = 1``, as Harte et al.'s code
  (sklearn ``PCA.fit_transform``); ``init`` rescales them to the standard deviation of the
  backbone's own random initialisation (0.02; this project's default until 2026-12-04, which
  cost LLMInit-GRU4Rec on Amazon_Beauty 12 % HR@10 / 16 % NDCG@10, bench/RESULTS.md), a number to that std;
* copied into the backbone's own ``nn.Embedding`` — row 0 (padding) zero, BERT4Rec's mask
  row and, if the features have fewer than ``width`` components, the remaining columns keep
  the backbone's random initialisation.

Training and inference are the backbone's, unchanged (no extra cost at inference).
"""
from __future__ import annotations

import torch

from recbole_genair.model.baselines.common import BaselineMixin, define_models, pca_item_table, pca_scale


class LLMInitMixin(BaselineMixin):
    """LLMInit: PCA of the LLM item embeddings initialises the trainable item table."""

    method = "llminit"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        features = self.llm_features(config, dataset)
        scale = pca_scale(config["llminit_std"], "llminit_std")
        with torch.no_grad():
            self.item_embedding.weight.copy_(pca_item_table(features, self.item_embedding.weight, scale))


MODELS = define_models(LLMInitMixin, "LLMInit", __name__)
LLMInitSASRec, LLMInitGRU4Rec, LLMInitBERT4Rec = MODELS["SASRec"], MODELS["GRU4Rec"], MODELS["BERT4Rec"]
build = MODELS.build
