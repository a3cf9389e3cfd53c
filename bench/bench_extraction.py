"""Benchmark: one-pass archetype extraction (``generate_and_embed``) vs the released code's approach.

Reference (the paper's released code, re-implemented faithfully, bugs included): batches of 16
prompts in the data set's item order, left padded, through Hugging Face
``model.generate(input_ids, attention_mask, max_new_tokens=N, do_sample=False,
output_hidden_states=True, return_dict_in_generate=True)``, then pooled from the returned
per-step states:

* prefill  = mean of ``hidden_states[0][-1]`` over ALL positions, left padding included (bug);
* decoding = mean of ``hidden_states[k][-1]`` for k = 1..steps-1, i.e. one state per later
  step, including the steps a finished row idles through after its stop token (bug).

``hidden_states[k]`` (k >= 1) is the state of generated token k-1 fed back, so the reference's
decoding mean covers generated tokens 1..n-1 of the batch's longest row (the last generated
token is never fed); ours (``generate_and_embed``) covers every generated token of the row up
to and including its stop token.  A "fixed reference" pooling is computed from the SAME
``generate()`` output with padding and after-stop steps masked out; agreement is checked
against it on the same token set (see the printed table).

Ours: :func:`recbole_genair.archetypes.extract.generate_and_embed` on the batches of
:func:`recbole_genair.archetypes.pipeline.plan_batches` (prompt-length sorted), batch 32 (and 16).

Same model (the offline SmolLM2-135M-Instruct GGUF), same prompts (the first ``--items`` ml-100k
items through ``load_prompts``/``encode_prompts``), same ``max_new_tokens``, greedy, and the same
stop tokens (``generate`` is given ``eos_token_id=llm.stop_ids`` and ``pad_token_id=llm.pad_id``,
so both sides stop on exactly the same tokens).  Everything runs in ONE process with
``torch.set_num_threads(1)``; the methods alternate within each round (the order rotates from
round to round) and medians over rounds are reported, so load from other processes hits all
sides alike.  Run from the project root:

    python bench/bench_extraction.py                      # 96 items, 32 new tokens, 3 rounds
    python bench/bench_extraction.py --quick              # smoke: 32 items, 8 new tokens, 1 round
    python bench/bench_extraction.py --items 160 --max_new_tokens 64 --rounds 5
    python bench/bench_extraction.py --max_new_tokens 64 --no-variants --extra_batch 64
    python bench/bench_extraction.py --no-variants --bf16  # also both sides with bfloat16 weights
    python bench/bench_extraction.py --no-variants --flops # also each method's work and GFLOP/s

``ours32 stock attention`` is ours on the LLM loaded with ``gqa_attention=False``: transformers'
own SDPA attention, which copies SmolLM2's 3 key/value heads into 9 at every layer and step when
a mask is passed (the reference always runs that one, as the released code does).

``ours32 unshared`` is ours without the shared-prefix prefill (``share_prefix=False``: every row
runs the chat template and instruction itself), timed every run, with its agreement printed.

Besides ours (32, 16) and the reference, two intermediate variants decompose the gap:
``ref16 no-hs`` (the same ``generate`` call without ``output_hidden_states``: what keeping
every layer's states costs) and ``ours16 item-order`` (our loop on the reference's exact
batches: what ``generate``'s per-step machinery costs).  Forward hooks split each method's
time into "inside the transformer + LM head" and "outside" (Python/generation overhead), and
one run with ``max_new_tokens=1`` per side gives the prefill share.

``--flops`` counts, after the timing, the floating-point work of one pass of every timed method
(``torch.utils.flop_counter``: the matrix products and the attention kernel) and prints each
method's work, its work relative to the reference's, and its achieved GFLOP/s next to this core's
rate for one decode-shaped matrix product: a speed-up is the reference's work over ours times
our efficiency over the reference's, which bounds what a faster loop can still gain.

``--bf16`` loads the same LLM a second time with bfloat16 weights (``--dtype=bfloat16`` of the
archetype step) and times both sides with it too (``ours32 sorted bf16``, ``ref16 bf16``); on a
CPU with AMX/AVX512-BF16 the matrix products run natively in bf16.  It then prints how far the
bf16 embeddings and tokens move from the fp32 ones (ours vs ours).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from recbole_genair.archetypes.extract import generate_and_embed, teacher_forced
from recbole_genair.archetypes.llm import encode_prompts, load_llm
from recbole_genair.archetypes.pipeline import ArchetypeJob, load_prompts, plan_batches, prompt_spec_for

REF_BATCH = 16


# --- reference -----------------------------------------------------------------------------
@dataclass
class RefBatch:
    rows: List[int]
    prefill: torch.Tensor         # [B, H] as released: mean over all prompt positions incl. padding
    decoding: torch.Tensor        # [B, H] as released: mean over hidden_states[1:] incl. after-stop steps
    prefill_fixed: torch.Tensor   # [B, H] mean over real prompt tokens only
    decoding_fixed: torch.Tensor  # [B, H] mean over fed generated tokens up to the row's stop token
    generated: List[List[int]]    # generated ids up to and including the stop token
    fed: List[int]                # how many generated tokens the fixed pooling covers per row
    padded: List[bool]            # the row had left padding in its batch
    idle_steps: List[int]         # after-stop steps the as-released decoding mean includes


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``tokenizer(..., padding=True)`` with ``padding_side='left'`` returns."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, length - len(seq):] = torch.as_tensor(seq)
        mask[row, length - len(seq):] = 1
    return ids, mask


def reference_generate(model, prompt_ids, max_new_tokens: int, stop_ids, pad_id: int,
                       hidden_states: bool = True):
    ids, mask = left_pad(prompt_ids, pad_id)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, output_hidden_states=hidden_states,
                             return_dict_in_generate=True, eos_token_id=list(stop_ids),
                             pad_token_id=pad_id)
    return ids, mask, out


def reference_pool(out, mask: torch.Tensor):
    """The released pooling (bugs included): plain means over the returned states."""
    hs = out.hidden_states
    prefill = hs[0][-1].float().mean(dim=1)                    # all positions, left padding too
    if len(hs) > 1:
        decoding = torch.cat([h[-1][:, -1:] for h in hs[1:]], dim=1).float().mean(dim=1)
    else:                                                      # one step only: nothing was fed back
        decoding = torch.zeros_like(prefill)
    return prefill, decoding


def fixed_pool(out, mask: torch.Tensor, prompt_len: int, stop_ids):
    """Same states, padding and after-stop steps masked (what the reference meant)."""
    hs = out.hidden_states
    maskf = mask.unsqueeze(-1).float()
    prefill = (hs[0][-1].float() * maskf).sum(1) / maskf.sum(1).clamp(min=1)
    gen = out.sequences[:, prompt_len:]
    steps = gen.shape[1]
    stop = set(int(t) for t in stop_ids)
    generated, fed = [], []
    for row in gen.tolist():
        m = next((k + 1 for k, t in enumerate(row) if t in stop), steps)
        generated.append(row[:m])
        fed.append(min(m, steps - 1))                          # the batch's last token is never fed
    if steps > 1:
        dec_states = torch.cat([h[-1][:, -1:] for h in hs[1:]], dim=1).float()   # [B, steps-1, H]
        k = torch.arange(steps - 1).unsqueeze(0)
        dmask = (k < torch.as_tensor(fed).unsqueeze(1)).unsqueeze(-1).float()
        decoding = (dec_states * dmask).sum(1) / dmask.sum(1).clamp(min=1)
    else:
        decoding = torch.zeros_like(prefill)
    idle = [steps - 1 - f for f in fed]
    return prefill, decoding, generated, fed, idle


def run_reference(llm, prompt_ids, batches, max_new_tokens: int, keep: bool = True,
                  hidden_states: bool = True) -> List[RefBatch]:
    results = []
    for rows in batches:
        batch = [prompt_ids[i] for i in rows]
        ids, mask, out = reference_generate(llm.model, batch, max_new_tokens, llm.stop_ids, llm.pad_id,
                                            hidden_states=hidden_states)
        if not hidden_states:
            continue
        pre, dec = reference_pool(out, mask)
        if keep:
            pre_f, dec_f, gen, fed, idle = fixed_pool(out, mask, ids.shape[1], llm.stop_ids)
            padded = [len(p) < ids.shape[1] for p in batch]
            results.append(RefBatch(rows, pre, dec, pre_f, dec_f, gen, fed, padded, idle))
    return results


def bench_prompts(llm, items: Optional[int], dataset: str = "ml-100k") -> tuple[List[str], List[List[int]], List[List[int]]]:
    """The first ``items`` items (None: all): (tokens, prompt ids, the reference's item-order batches)."""
    tokens, prompts = load_prompts(ArchetypeJob(dataset=dataset), prompt_spec_for(dataset))
    tokens, prompts = tokens[:items], prompts[:items]
    prompt_ids = encode_prompts(llm.tokenizer, prompts)
    n = len(prompt_ids)
    return tokens, prompt_ids, [list(range(s, min(s + REF_BATCH, n))) for s in range(0, n, REF_BATCH)]


# --- ours ----------------------------------------------------------------------------------
def run_ours(llm, prompt_ids, batches, max_new_tokens: int, share_prefix: bool = True) -> Dict[int, tuple]:
    results = {}
    for rows in batches:
        res = generate_and_embed(llm.model, [prompt_ids[i] for i in rows], max_new_tokens=max_new_tokens,
                                 stop_ids=llm.stop_ids, pad_id=llm.pad_id, share_prefix=share_prefix)
        for k, i in enumerate(rows):
            results[i] = (res.prefill[k], res.decoding[k], res.generated[k], res.stopped[k])
    return results


# --- work counting ----------------------------------------------------------------------------
@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_sdpa_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """torch counts no work for the CPU attention kernel: scores (Q K^T) plus weighted values, per query head."""
    batch, heads, q_len, dim = query
    return 2 * batch * heads * q_len * key[2] * (dim + value[3])


def count_gflop(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def gemm_rate(rows: int, d_in: int, d_out: int, calls: int = 60, repeats: int = 5) -> float:
    """Best GFLOP/s over ``repeats`` timings of ``calls`` [rows, d_in] x [d_in, d_out] products (this process's threads)."""
    x, w = torch.randn(rows, d_in), torch.randn(d_out, d_in)
    best = float("inf")
    for rep in range(repeats + 1):                   # the first timing is a warm-up
        t0 = time.perf_counter()
        for _ in range(calls):
            F.linear(x, w)
        if rep:
            best = min(best, time.perf_counter() - t0)
    return 2 * rows * d_in * d_out * calls / best / 1e9


# --- timing helpers ------------------------------------------------------------------------
class InsideTimer:
    """Wall time spent inside the transformer stack and the LM head (forward hooks)."""

    def __init__(self, *models):
        self.total = 0.0
        self._t0 = None
        self.handles = []
        for module in (m for model in models for m in (model.get_decoder(), model.get_output_embeddings())):
            self.handles.append(module.register_forward_pre_hook(self._pre))
            self.handles.append(module.register_forward_hook(self._post))

    def _pre(self, *_):
        self._t0 = time.perf_counter()

    def _post(self, *_):
        self.total += time.perf_counter() - self._t0

    def reset(self):
        self.total = 0.0


def cos_stats(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    if len(a) == 0:
        return float("nan"), float("nan")
    c = F.cosine_similarity(a.double(), b.double(), dim=-1)
    return c.min().item(), c.mean().item()


def waste(prompt_ids, batches, gen_len: Dict[int, int]) -> tuple[float, float]:
    """Share of padded prompt positions and of decode row-steps after a row stopped."""
    real = padded = dec_real = dec_all = 0
    for rows in batches:
        lens = [len(prompt_ids[i]) for i in rows]
        real += sum(lens)
        padded += max(lens) * len(rows)
        g = [gen_len[i] for i in rows]
        dec_real += sum(g)
        dec_all += max(g) * len(rows)
    return 1 - real / padded, 1 - dec_real / dec_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=96)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke: 32 items, 8 tokens, 1 round")
    parser.add_argument("--extra_batch", type=int, nargs="*", default=[],
                        help="also time ours at these (sorted) batch sizes, e.g. --extra_batch 64")
    parser.add_argument("--no-variants", action="store_true",
                        help="skip the two decomposition variants (ref16 no-hs, ours16 item-order)")
    parser.add_argument("--flops", action="store_true",
                        help="also count each method's floating-point work (one untimed pass each)")
    parser.add_argument("--bf16", action="store_true",
                        help="also time ours32 and ref16 with bfloat16 weights and compare with fp32")
    args = parser.parse_args()
    if args.quick:
        args.items, args.max_new_tokens, args.rounds = 32, 8, 1
    torch.set_num_threads(1)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    llm = load_llm()
    # The released code runs transformers' own attention, which copies the key/value heads of a
    # grouped-query model (SmolLM2: 9 query, 3 key/value heads) at every step; ours runs
    # ``use_gqa_sdpa`` (``load_llm``'s default).  ``ours32 stock attention`` is ours without it.
    stock = load_llm(gqa_attention=False)
    assert stock.model.config._attn_implementation == "sdpa" != llm.model.config._attn_implementation
    tokens, prompt_ids, item_order = bench_prompts(llm, args.items)
    n = len(prompt_ids)
    sorted32 = plan_batches(tokens, prompt_ids, 32)
    sorted16 = plan_batches(tokens, prompt_ids, 16)
    N = args.max_new_tokens
    print(f"# {n} ml-100k items, prompts {min(map(len, prompt_ids))}-{max(map(len, prompt_ids))} tokens, "
          f"max_new_tokens={N}, greedy, stop ids {llm.stop_ids}, pad id {llm.pad_id}, 1 thread, "
          f"torch {torch.__version__}", flush=True)

    methods: Dict[str, Callable] = {
        "ours32 sorted": lambda: run_ours(llm, prompt_ids, sorted32, N),
        "ref16 (released)": lambda: run_reference(stock, prompt_ids, item_order, N, keep=False),
        "ours32 stock attention": lambda: run_ours(stock, prompt_ids, sorted32, N),
        "ours16 sorted": lambda: run_ours(llm, prompt_ids, sorted16, N),
        "ours32 unshared": lambda: run_ours(llm, prompt_ids, sorted32, N, share_prefix=False),
    }
    extra_batches = {f"ours{b} sorted": plan_batches(tokens, prompt_ids, b) for b in args.extra_batch}
    for name, b in extra_batches.items():
        methods[name] = (lambda b=b: run_ours(llm, prompt_ids, b, N))
    llm16 = load_llm(dtype="bfloat16") if args.bf16 else None
    stock16 = load_llm(dtype="bfloat16", gqa_attention=False) if args.bf16 else None
    if llm16 is not None:
        methods["ours32 sorted bf16"] = lambda: run_ours(llm16, prompt_ids, sorted32, N)
        methods["ref16 bf16"] = lambda: run_reference(stock16, prompt_ids, item_order, N, keep=False)
    if not args.no_variants:
        methods["ref16 no-hs"] = lambda: run_reference(stock, prompt_ids, item_order, N, hidden_states=False)
        methods["ours16 item-order"] = lambda: run_ours(llm, prompt_ids, item_order, N)

    # warm-up (one batch each), then the rounds
    run_ours(llm, prompt_ids, sorted32[:1], min(N, 4))
    run_reference(stock, prompt_ids, item_order[:1], min(N, 4), keep=False)
    run_ours(stock, prompt_ids, sorted32[:1], min(N, 4))
    if llm16 is not None:
        run_ours(llm16, prompt_ids, sorted32[:1], min(N, 4))
        run_reference(stock16, prompt_ids, item_order[:1], min(N, 4), keep=False)
    timer = InsideTimer(*[x.model for x in (llm, stock, llm16, stock16) if x is not None])
    times: Dict[str, List[float]] = {k: [] for k in methods}
    inside: Dict[str, List[float]] = {k: [] for k in methods}
    names = list(methods)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            timer.reset()
            t0 = time.perf_counter()
            methods[name]()
            dt = time.perf_counter() - t0
            times[name].append(dt)
            inside[name].append(timer.total)
            print(f"  round {r + 1}: {name:18s} {dt:7.2f} s  ({n / dt:5.2f} items/s, "
                  f"{100 * timer.total / dt:4.1f} % inside model)", flush=True)
    for h in timer.handles:
        h.remove()

    med = {k: statistics.median(v) for k, v in times.items()}
    ref = med["ref16 (released)"]
    print(f"\n## throughput (median of {args.rounds} rounds; ratio = reference time / method time)")
    print("| method | batches | s | items/s | vs ref16 | inside model s | outside s |")
    print("|---|---|--:|--:|--:|--:|--:|")
    batches_of = {"ours32 sorted": sorted32, "ours16 sorted": sorted16, "ours32 sorted bf16": sorted32,
                  "ours32 unshared": sorted32, "ours32 stock attention": sorted32, **extra_batches}
    for k in names:
        b = batches_of.get(k, item_order)
        ins = statistics.median(inside[k])
        print(f"| {k} | {len(b)}×≤{max(map(len, b))} | {med[k]:.2f} | {n / med[k]:.2f} | "
              f"{ref / med[k]:.2f}x | {ins:.2f} | {med[k] - ins:.2f} |")
    print(f"\nours32 vs reference: {ref / med['ours32 sorted']:.2f}x  (goal >= 3x: "
          f"{'met' if ref / med['ours32 sorted'] >= 3 else 'NOT met'});  ours16 vs reference: "
          f"{ref / med['ours16 sorted']:.2f}x;  shared prefix vs unshared (ours32): "
          f"{med['ours32 unshared'] / med['ours32 sorted']:.2f}x, ours32 unshared vs reference: "
          f"{ref / med['ours32 unshared']:.2f}x;  grouped-query attention vs stock (ours32): "
          f"{med['ours32 stock attention'] / med['ours32 sorted']:.2f}x, ours32 stock attention vs reference: "
          f"{ref / med['ours32 stock attention']:.2f}x", flush=True)
    if llm16 is not None:
        print(f"bf16: ours32 bf16 vs reference as released (fp32): {ref / med['ours32 sorted bf16']:.2f}x "
              f"(goal >= 3x: {'met' if ref / med['ours32 sorted bf16'] >= 3 else 'NOT met'}); vs ref16 bf16: "
              f"{med['ref16 bf16'] / med['ours32 sorted bf16']:.2f}x; ours32 fp32 / ours32 bf16: "
              f"{med['ours32 sorted'] / med['ours32 sorted bf16']:.2f}x", flush=True)

    if args.flops:
        gflop = {k: count_gflop(methods[k]) for k in names}
        cfg = llm.model.config
        rate = gemm_rate(32, cfg.hidden_size, cfg.intermediate_size)
        print("\n## work (one untimed pass each; matrix products + attention kernel)")
        print("| method | GFLOP | reference's work / method's | achieved GFLOP/s | vs ref16 time |")
        print("|---|--:|--:|--:|--:|")
        for k in names:
            print(f"| {k} | {gflop[k]:.1f} | {gflop['ref16 (released)'] / gflop[k]:.2f}x | "
                  f"{gflop[k] / med[k]:.1f} | {ref / med[k]:.2f}x |")
        eff = (gflop["ours32 sorted"] / med["ours32 sorted"]) / (gflop["ref16 (released)"] / ref)
        print(f"ours32 vs reference = work {gflop['ref16 (released)'] / gflop['ours32 sorted']:.2f}x "
              f"x efficiency {eff:.2f}x; one thread's rate on a [32, {cfg.hidden_size}] x "
              f"[{cfg.hidden_size}, {cfg.intermediate_size}] product: {rate:.1f} GFLOP/s (ours32 runs at "
              f"{100 * gflop['ours32 sorted'] / med['ours32 sorted'] / rate:.0f} % of it)", flush=True)

    # --- where the time goes: prefill vs decoding (ours32 with one new token ~ prefill only) --
    t0 = time.perf_counter()
    run_ours(llm, prompt_ids, sorted32, 1)
    t_pre = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_ours(llm, prompt_ids, sorted32, 1, share_prefix=False)
    t_pre_unshared = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_reference(stock, prompt_ids, item_order, 1, keep=False)
    t_pre_ref = time.perf_counter() - t0
    print(f"prefill only (max_new_tokens=1, one run each): ours32 {t_pre:.2f} s = "
          f"{100 * t_pre / med['ours32 sorted']:.0f} % of its total; ref16 {t_pre_ref:.2f} s = "
          f"{100 * t_pre_ref / ref:.0f} % of its total; decoding {N} tokens: ours32 "
          f"{med['ours32 sorted'] - t_pre:.2f} s, ref16 {ref - t_pre_ref:.2f} s; prefill ours32 unshared "
          f"{t_pre_unshared:.2f} s (shared prefix: {t_pre_unshared / t_pre:.2f}x)", flush=True)

    # --- agreement (one more untimed pass of each) -------------------------------------------
    ours = run_ours(llm, prompt_ids, sorted32, N)
    refb = run_reference(stock, prompt_ids, item_order, N, keep=True)
    R = {}
    for b in refb:
        for k, i in enumerate(b.rows):
            R[i] = dict(pre=b.prefill[k], dec=b.decoding[k], pre_f=b.prefill_fixed[k], dec_f=b.decoding_fixed[k],
                        gen=b.generated[k], fed=b.fed[k], padded=b.padded[k], idle=b.idle_steps[k])
    rows = list(range(n))
    same_tokens = [i for i in rows if ours[i][2] == R[i]["gen"]]
    print(f"\n## agreement (cosine min / mean); generated token sequences identical: "
          f"{len(same_tokens)}/{n} rows")
    stack = lambda idx, f: torch.stack([f(i) for i in idx]) if idx else torch.zeros(0, llm.hidden_size)
    nopad = [i for i in rows if not R[i]["padded"]]
    pad = [i for i in rows if R[i]["padded"]]

    def header():
        print("| comparison | rows | cos min | cos mean | n |")
        print("|---|---|--:|--:|--:|")

    def line(label, subset, idx, fa, fb):
        lo, mean = cos_stats(stack(idx, fa), stack(idx, fb))
        print(f"| {label} | {subset} | {lo:.5f} | {mean:.5f} | {len(idx)} |")

    def versus(title, label, other):
        """Ours32 under another setting vs ours32 as timed: tokens, then both embeddings."""
        same = [i for i in rows if other[i][2] == ours[i][2]]
        print(f"\n## {title} (ours32 both; cosine min / mean); generated token sequences "
              f"identical: {len(same)}/{n} rows")
        header()
        line(f"prefill: {label}", "all", rows, lambda i: other[i][0], lambda i: ours[i][0])
        line(f"decoding: {label}", "all", rows, lambda i: other[i][1], lambda i: ours[i][1])
        line(f"decoding: {label}", "identical tokens", same, lambda i: other[i][1], lambda i: ours[i][1])
        print(f"max |prefill difference|: {max(float((other[i][0] - ours[i][0]).abs().max()) for i in rows):.2e}")

    header()

    line("prefill: ours vs reference as released", "no left padding (bug does not bite)", nopad,
         lambda i: ours[i][0], lambda i: R[i]["pre"])
    line("prefill: ours vs reference as released", "left padded (bug bites)", pad,
         lambda i: ours[i][0], lambda i: R[i]["pre"])
    line("prefill: ours vs fixed reference", "all", rows, lambda i: ours[i][0], lambda i: R[i]["pre_f"])
    # decoding on the same token set: rows whose stop token was fed back inside generate()
    same_set = [i for i in same_tokens if R[i]["fed"] == len(ours[i][2])]
    line("decoding: ours vs fixed reference", "same token set (row stopped before the batch's last step)",
         same_set, lambda i: ours[i][1], lambda i: R[i]["dec_f"])
    # ours' pooling recomputed (teacher forcing) on exactly the reference's fed tokens
    tf_rows = [i for i in rows if R[i]["fed"] > 0]
    tf = {}
    for s in range(0, len(tf_rows), 32):
        chunk = tf_rows[s:s + 32]
        _, dec = teacher_forced(llm.model, [prompt_ids[i] for i in chunk],
                                [R[i]["gen"][:R[i]["fed"]] for i in chunk], llm.pad_id)
        tf.update({i: dec[k] for k, i in enumerate(chunk)})
    line("decoding: ours teacher-forced on ref's fed tokens vs fixed reference", "all", tf_rows,
         lambda i: tf[i], lambda i: R[i]["dec_f"])
    line("decoding: ours as-is vs fixed reference (ours also pools the last token)", "all", rows,
         lambda i: ours[i][1], lambda i: R[i]["dec_f"])
    line("decoding: ours vs reference as released", "no after-stop steps (bug does not bite)",
         [i for i in rows if R[i]["idle"] == 0], lambda i: ours[i][1], lambda i: R[i]["dec"])
    line("decoding: ours vs reference as released", "with after-stop steps (bug bites)",
         [i for i in rows if R[i]["idle"] > 0], lambda i: ours[i][1], lambda i: R[i]["dec"])

    versus("unshared vs shared prefix (fp32)", "unshared vs shared",
           run_ours(llm, prompt_ids, sorted32, N, share_prefix=False))
    versus("transformers' attention vs grouped-query attention (fp32)", "stock vs GQA attention",
           run_ours(stock, prompt_ids, sorted32, N))
    if llm16 is not None:
        versus("bf16 vs fp32 weights", "bf16 vs fp32", run_ours(llm16, prompt_ids, sorted32, N))

    gen_len = {i: len(ours[i][2]) for i in rows}
    for label, b in (("item order, 16", item_order), ("sorted, 16", sorted16), ("sorted, 32", sorted32)):
        pw, dw = waste(prompt_ids, b, gen_len)
        print(f"padding waste ({label}): prompt positions {100 * pw:.1f} %, decode row-steps after stop {100 * dw:.1f} %")
    stopped = sum(1 for i in rows if ours[i][3])
    print(f"rows stopped by a stop token: {stopped}/{n}; mean generated tokens {statistics.mean(gen_len.values()):.1f}")


if __name__ == "__main__":
    main()
