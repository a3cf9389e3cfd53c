"""LLMInit: LLM embeddings initialise a trainable ID item table (``--method=llminit``).

Harte et al., "Leveraging Large Language Models for Sequential Recommendation" (RecSys 2023),
the *LLM2Sequential* approach (LLM2BERT4Rec): the item embeddings of the sequential model
are initialised with the LLM embeddings of the items, reduced to the model's embedding size
by PCA, and then trained as ordinary ID embeddings with the model's usual objective.  The
same baseline ("LLMInit", semantic initialisation) appears in the AlphaFuse paper's
comparison (Hu et al., SIGIR 2025; its code's ``SI`` mode whitens the coordinates).

Here, at construction (:func:`~recbole_genair.model.baselines.common.pca_item_table`):

* ``E_0[i] = c·(x_i - μ)·V_k`` for every item ``i`` — the top ``k = min(width, rank)``
  principal coordinates of the prefill embeddings ``x_i`` (mean ``μ`` over the items), one
  global factor ``c`` rescaling them to ``llminit_std`` (default: the standard deviation of
  the backbone's own random initialisation, so initial logits keep the backbone's scale;
  Harte et al.'s code uses the PCA coordinates unscaled — their scale depends on the LLM's
  embedding space, and ours are PCA-reduced hidden states, not unit-norm API embeddings);
* copied into the backbone's own ``nn.Embedding`` — row 0 (padding) zero, BERT4Rec's mask
  row and, if the features have fewer than ``width`` components, the remaining columns keep
  the backbone's random initialisation.

Training and inference are the backbone's, unchanged (no extra cost at inference).
"""
from __future__ import annotations

import torch

from recbole_genair.model.baselines.common import BaselineMixin, define_models, pca_item_table


class LLMInitMixin(BaselineMixin):
    """LLMInit: PCA of the LLM item embeddings initialises the trainable item table."""

    method = "llminit"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        features = self.llm_features(config, dataset)
        std = config["llminit_std"]
        with torch.no_grad():
            self.item_embedding.weight.copy_(pca_item_table(
                features, self.item_embedding.weight, None if std is None else float(std)))


MODELS = define_models(LLMInitMixin, "LLMInit", __name__)
LLMInitSASRec, LLMInitGRU4Rec, LLMInitBERT4Rec = MODELS["SASRec"], MODELS["GRU4Rec"], MODELS["BERT4Rec"]
build = MODELS.build
