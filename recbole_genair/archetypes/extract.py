"""One-pass archetype generation and embedding extraction (GenAIR paper §3.1, Eq. 5-7).

For a batch of prompts the LLM runs once:

* **prefill embedding** = mean of the last-layer hidden states over the *real* prompt
  tokens (left padding excluded);
* **decoding embedding** = mean of the last-layer hidden states of the generated tokens,
  up to and including the stop token (EOS / end-of-turn), never over padding, prompt
  positions, or the steps a finished row idles through.  The hidden state of a generated
  token is the state computed when that token is fed back, so each generated token,
  the stop token included, is fed exactly once.

Only the last layer is computed and kept (the released code asks ``generate`` for every
layer at every step).  Left padding is handled with explicit position ids, so a batch gives
the same embeddings as one-by-one generation up to float round-off.  The prompts' common
prefix (chat template + instruction) is computed once per batch and its cache shared.

:func:`teacher_forced` recomputes both embeddings from prompt ids and generated ids with one
forward pass, which is how committed archetype texts are turned back into features without
generating again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch


@dataclass
class BatchResult:
    prefill: torch.Tensor          # [B, H] float32
    decoding: torch.Tensor         # [B, H] float32
    generated: List[List[int]]     # generated ids per row, stop token included when reached
    stopped: List[bool]            # True when a stop token ended the row


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if len(seq):
            ids[row, length - len(seq):] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, length - len(seq):] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float,
          generator: Optional[torch.Generator | Sequence[torch.Generator]]) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / max(temperature, 1e-6), dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    if isinstance(generator, (list, tuple)):  # one per row: a row's draws do not depend on its batch
        return torch.cat([torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generator)])
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def common_prefix_length(prompt_ids: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving each prompt at least one token of its own.

    Archetype prompts share the chat template and the paper's instruction (50-52 of the
    86-197 SmolLM2 tokens of ml-100k and Amazon_Beauty prompts), and a causal model's states
    over a shared prefix are the same for every row, so the prefix is computed once per batch.
    """
    first = prompt_ids[0]
    limit = min(len(p) for p in prompt_ids) - 1
    k = 0
    while k < limit and all(p[k] == first[k] for p in prompt_ids):
        k += 1
    return k


def _forward_shared(decoder, seqs: Sequence[Sequence[int]], k: int, pad_id: int, device, keep_cache: bool):
    """Forward ``seqs``, whose first ``k`` tokens are the same in every row, with that prefix once.

    The prefix runs as a single row and its key/value cache is repeated for every row; each
    row's own tokens follow, left padded *after* the prefix (padding masked, positions
    continuing from the prefix), so every row sees exactly the keys and positions it would see
    alone.  ``keep_cache``: return the key/value cache (generation goes on from it).  Returns
    (output over the own tokens, summed prefix states [H] or 0, attention mask including the
    prefix columns, own-token mask, positions).
    """
    ids, own = _left_pad([s[k:] for s in seqs], pad_id)
    ids, own = ids.to(device), own.to(device)
    pos = _positions(own) + k
    cache, prefix_sum, mask = None, 0.0, own
    if k:
        prefix = torch.as_tensor([list(seqs[0][:k])], dtype=torch.long, device=device)
        out = decoder(input_ids=prefix, position_ids=torch.arange(k, device=device).unsqueeze(0),
                      use_cache=True)
        prefix_sum = out.last_hidden_state[0].float().sum(0)
        cache = out.past_key_values
        cache.batch_repeat_interleave(len(seqs))
        mask = torch.cat([torch.ones(own.shape[0], k, dtype=own.dtype, device=device), own], dim=-1)
    out = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                  use_cache=keep_cache)
    return out, prefix_sum, mask, own, pos


def body(model):
    """The transformer stack under a causal LM's head, whose ``last_hidden_state`` is the last
    layer's (final norm included): ``model.model`` for Llama/Qwen/Mistral, ``.transformer`` for
    GPT-2, ``.gpt_neox`` for Pythia.  ``get_decoder()`` would return the whole LM for the latter two."""
    stack = model.base_model
    if stack is model:
        raise TypeError(f"{type(model).__name__} has no base model under its LM head "
                        f"(base_model_prefix {model.base_model_prefix!r})")
    return stack


def _shared_length(prompt_ids: Sequence[Sequence[int]], share_prefix: bool) -> int:
    return common_prefix_length(prompt_ids) if share_prefix and len(prompt_ids) > 1 else 0


def _prefill(decoder, prompt_ids: Sequence[Sequence[int]], pad_id: int, device, share_prefix: bool):
    """Run the prompts; return (last states, prefill means, cache, attention mask, last positions).

    With ``share_prefix`` the batch's common prefix runs once (:func:`_forward_shared`) and the
    prefill mean adds the prefix's summed states to the row's own: the same value as the
    unshared pass up to float round-off.
    """
    k = _shared_length(prompt_ids, share_prefix)
    out, prefix_sum, mask, own, pos = _forward_shared(decoder, prompt_ids, k, pad_id, device, keep_cache=True)
    hidden = out.last_hidden_state.float()
    ownf = own.unsqueeze(-1).to(hidden.dtype)
    prefill = (prefix_sum + (hidden * ownf).sum(1)) / (ownf.sum(1) + k).clamp(min=1)
    return out.last_hidden_state[:, -1], prefill, out.past_key_values, mask, pos[:, -1]


@torch.inference_mode()
def generate_and_embed(model, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
                       stop_ids: Sequence[int], pad_id: int, do_sample: bool = False,
                       temperature: float = 1.0, top_p: float = 1.0,
                       generator: Optional[torch.Generator | Sequence[torch.Generator]] = None,
                       share_prefix: bool = True) -> BatchResult:
    """Generate archetypes for a batch and return both pooled embeddings (one pass).

    ``generator``: for sampling, one generator, or one per row (then each row samples the
    same tokens whatever batch it runs in, up to float round-off).

    ``share_prefix`` computes the prompts' common prefix once (see :func:`_prefill`); the
    results equal the unshared pass up to float round-off, like a change of thread count.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    if isinstance(generator, (list, tuple)) and len(generator) != len(prompt_ids):
        raise ValueError(f"{len(generator)} generators for {len(prompt_ids)} prompts")
    device = next(model.parameters()).device
    decoder, head = body(model), model.get_output_embeddings()
    last, prefill, cache, mask, last_pos = _prefill(decoder, prompt_ids, pad_id, device, share_prefix)
    logits = head(last)

    batch = mask.shape[0]
    stop = torch.as_tensor(list(stop_ids), dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    stopped = torch.zeros(batch, dtype=torch.bool, device=device)
    dec_sum = torch.zeros_like(prefill)
    dec_n = torch.zeros(batch, 1, device=device)
    tokens = []
    for _ in range(max_new_tokens):
        nxt = _pick(logits, do_sample, temperature, top_p, generator)
        active = ~finished
        nxt = torch.where(active, nxt, torch.full_like(nxt, pad_id))
        tokens.append(torch.where(active, nxt, torch.full_like(nxt, -1)))
        mask = torch.cat([mask, active.long().unsqueeze(-1)], dim=-1)
        last_pos = last_pos + 1
        out = decoder(input_ids=nxt.unsqueeze(-1), attention_mask=mask,
                      position_ids=last_pos.unsqueeze(-1), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        h = out.last_hidden_state[:, -1]
        af = active.unsqueeze(-1).to(dec_sum.dtype)
        dec_sum += h.float() * af
        dec_n += af
        hit = active & torch.isin(nxt, stop)
        stopped |= hit
        finished |= hit
        if bool(finished.all()):
            break
        logits = head(h)
    decoding = dec_sum / dec_n.clamp(min=1)
    gen = torch.stack(tokens, dim=1).cpu()
    generated = [[int(t) for t in row if t >= 0] for row in gen]
    return BatchResult(prefill.cpu(), decoding.cpu(), generated, stopped.cpu().tolist())


@torch.inference_mode()
def teacher_forced(model, prompt_ids: Sequence[Sequence[int]], generated: Sequence[Sequence[int]],
                   pad_id: int, share_prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Both pooled embeddings from prompt + already generated ids, in one forward pass.

    ``share_prefix``: the prompts' common prefix runs once, as in :func:`generate_and_embed`.
    """
    device = next(model.parameters()).device
    k = _shared_length(prompt_ids, share_prefix)
    full = [list(p) + list(g) for p, g in zip(prompt_ids, generated)]
    out, prefix_sum, _, own, _ = _forward_shared(body(model), full, k, pad_id, device, keep_cache=False)
    hidden = out.last_hidden_state.float()
    length = own.shape[1]
    pmask = torch.zeros_like(own, dtype=hidden.dtype)
    gmask = torch.zeros_like(own, dtype=hidden.dtype)
    for row, (p, g) in enumerate(zip(prompt_ids, generated)):
        start = length - (len(p) - k) - len(g)
        pmask[row, start:start + len(p) - k] = 1
        gmask[row, start + len(p) - k:] = 1
    pre = (prefix_sum + (hidden * pmask.unsqueeze(-1)).sum(1)) / (pmask.sum(1, keepdim=True) + k).clamp(min=1)
    dec = (hidden * gmask.unsqueeze(-1)).sum(1) / gmask.sum(1, keepdim=True).clamp(min=1)
    return pre.cpu(), dec.cpu()
