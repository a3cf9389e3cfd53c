"""Benchmark: GenAIR's training and inference cost relative to the plain RecBole backbone.

Claims checked (issue): per backbone (SASRec, GRU4Rec, BERT4Rec) on Amazon_Beauty,
training epoch time GenAIR / base <= 1.15 and full-sort inference latency GenAIR / base <= 1.05.

Settings are the paper's (``properties/``: hidden 128, train batch 128,
MAX_ITEM_LIST_LENGTH 50, CE over all items, Adam lr 1e-3), built through
``recbole_genair.quick_start.build_config`` / ``prepare`` with ``torch_threads: 1``.

**Features.**  The data set's real archetype features (``dataset/NAME/NAME.archetype``, from
``python -m recbole_genair.archetypes``).  ``--synthetic`` instead writes, for TIMING ONLY, a
random feature file with one row per item token of ``NAME.item`` and 163 prefill + 90
decoding dims (the sizes PCA kept on ml-100k) to a temp dir and passes it as
``archetype_feature_file`` (how the first results were taken, before Beauty's features
existed); the values do not change the cost, only the widths do.  The co-occurrence for
the calibration loss is always the real one (counted from the training sequences by
``ArchetypeDataset``).

**Training.**  Per backbone: base, genair (calibration α from properties, 1e-3) and genair
with ``calibration_alpha: 0`` (projector only), each with its own Adam, fed the SAME
training batches (taken from the base loader; the item id maps are asserted identical).  One
step = ``loss = model.calculate_loss(batch); opt.zero_grad(); loss.backward(); opt.step()``.
After warm-up steps, the variants alternate in rounds (order rotated per round) and the
median step time gives the ratio.  Epoch time is extrapolated as
``batches_per_epoch × (median step + loader time per batch)``; the loader time (RecBole's
collate, identical for both) is measured once and reported separately, so both the pure
step ratio and the epoch ratio are shown.  "projector" is the projector's forward + backward
alone (the full 12,101-row table), timed in the same rounds.

**Inference.**  ``model.eval()`` + ``torch.no_grad()``, ``full_sort_predict`` on the first
validation batches (``eval_batch_size`` 1024 users); the first GenAIR call after ``eval()``
builds the cached projected table (reported separately as a one-off cost); afterwards base
and genair alternate batch by batch in rounds.

**Sampled ranking loss.**  ``--loss_type BPR`` (one uniform negative per positive, the
reference code's kind of objective) times the same variants; GenAIR then projects only the
rows a step looks up (``CachedTable.step(sparse=True)``), and a fourth variant, "genair
dense", forces the whole-table projection per step, so the saving shows side by side.

Run from the project root (both sides in one process, 1 thread):

    python bench/bench_model_cost.py                  # Amazon_Beauty, 60 steps, 3 backbones
    python bench/bench_model_cost.py --quick          # smoke: 10 steps, 1 inference batch
    python bench/bench_model_cost.py --dataset ml-100k
    python bench/bench_model_cost.py --synthetic      # random features of ml-100k's widths
    python bench/bench_model_cost.py --loss_type BPR --max_len 20 --backbones GRU4Rec,SASRec
    python bench/bench_model_cost.py --batch_size 512 --backbones GRU4Rec,SASRec   # the fixed
        # per-step projector cost against a larger step (RecBole's own default batch is 2048)
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch
from recbole.utils import init_seed

from bench_extraction import gemm_rate
from recbole_genair.paths import DATASET_DIR
from recbole_genair.quick_start import build_config, prepare

BACKBONES = ("SASRec", "GRU4Rec", "BERT4Rec")
SYNTH_DIMS = (163, 90)   # ml-100k PCA sizes (prefill, decoding)


def write_synthetic_features(item_file: Path, out: Path, dims=SYNTH_DIMS, seed: int = 0) -> int:
    """One row per item token, PCA-like scale (decaying per component); values are irrelevant."""
    with open(item_file, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        col = [h.split(":")[0] for h in header].index("item_id")
        tokens = [line.rstrip("\n").split("\t")[col] for line in fh if line.strip()]
    rng = np.random.default_rng(seed)
    lines = ["item_id:token\tprefill_emb:float_seq\tdecoding_emb:float_seq"]
    scales = [1.0 / np.sqrt(1 + np.arange(d)) for d in dims]
    for t in tokens:
        p, d = (rng.standard_normal(k).astype(np.float32) * s for k, s in zip(dims, scales))
        lines.append(t + "\t" + " ".join(f"{v:.5g}" for v in p) + "\t" + " ".join(f"{v:.5g}" for v in d))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(tokens)


def build(backbone: str, dataset: str, method: str, extra: dict):
    config = build_config(backbone, dataset, method, config_dict=dict(extra))
    data, (train, valid, _), model, _ = prepare(config)
    return config, data, train, valid, model


def train_step(model, opt, batch) -> float:
    t0 = time.perf_counter()
    loss = model.calculate_loss(batch)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def projector_step(emb) -> float:
    """Forward + backward of the whole projected table alone (what GenAIR adds per step)."""
    t0 = time.perf_counter()
    table = emb.project()
    table.sum().backward()
    return time.perf_counter() - t0


def med(xs: List[float]) -> float:
    return statistics.median(xs)


def first_batches(loader, n: int) -> list:
    """The loader's first ``n`` batches (fewer if an epoch has fewer)."""
    return list(itertools.islice(loader, n))


def timed_rounds(step: Callable[[str, object], float], names: List[str], batches: list,
                 rounds: int) -> Dict[str, List[float]]:
    """``step(name, batch)`` for every variant on the same batches, interleaved against drift.

    The batches are split into ``rounds`` equal chunks; each round runs every variant over
    its chunk, in an order rotated by one per round.  Returns each variant's step times.
    """
    per_round = max(1, len(batches) // rounds)
    times: Dict[str, List[float]] = {k: [] for k in names}
    for r in range(rounds):
        chunk = batches[r * per_round:(r + 1) * per_round] or batches[:per_round]
        for k in names[r % len(names):] + names[:r % len(names)]:
            for b in chunk:
                times[k].append(step(k, b))
    return times


def bench_backbone(backbone: str, args, extra: dict, genair_extra: dict) -> dict:
    t0 = time.perf_counter()
    cfg_b, data_b, train_b, valid_b, base = build(backbone, args.dataset, "base", extra)
    cfg_g, data_g, train_g, valid_g, genair = build(backbone, args.dataset, "genair", {**extra, **genair_extra})
    iid = cfg_b["ITEM_ID_FIELD"]
    assert list(data_b.field2id_token[iid]) == list(data_g.field2id_token[iid]), "item id maps differ"
    # projector only: same config with calibration off, same data set object
    cfg_g["calibration_alpha"] = 0.0
    init_seed(cfg_g["seed"], cfg_g["reproducibility"])
    nocal = cfg_g.model_class(cfg_g, train_g._dataset)
    cfg_g["calibration_alpha"] = genair.calibration_alpha
    dense = None
    if genair.sparse_step():  # the same model class with the whole table projected per step
        init_seed(cfg_g["seed"], cfg_g["reproducibility"])
        dense = cfg_g.model_class(cfg_g, train_g._dataset)
        dense.sparse_step = lambda: False
    alpha = float(genair.calibration_alpha)
    setup_s = time.perf_counter() - t0

    n_batches = len(train_b)
    need = args.warmup + args.steps
    t_load = time.perf_counter()
    batches = first_batches(train_b, need)
    load_per_batch = (time.perf_counter() - t_load) / len(batches)

    models = {"base": base, "genair": genair, "genair α=0": nocal}
    if dense is not None:
        models["genair dense"] = dense
    opts = {k: torch.optim.Adam(m.parameters(), lr=float(cfg_b["learning_rate"])) for k, m in models.items()}
    for m in models.values():
        m.train()
    for k, m in models.items():                           # warm-up
        for b in batches[:args.warmup]:
            train_step(m, opts[k], b)
    def step(k: str, b) -> float:
        if k == "projector":
            genair.zero_grad(set_to_none=True)
            return projector_step(genair.item_embedding)
        return train_step(models[k], opts[k], b)

    step_t = timed_rounds(step, list(models) + ["projector"], batches[args.warmup:], args.rounds)
    genair.zero_grad(set_to_none=True)

    # --- inference ---
    eval_batches = []
    for batched in valid_b:
        eval_batches.append(batched[0])
        if len(eval_batches) >= args.eval_batches:
            break
    for m in models.values():
        m.eval()
    models.pop("genair dense", None)
    with torch.no_grad():
        t = time.perf_counter()
        genair.full_sort_predict(eval_batches[0])              # builds the cached table
        first_call = time.perf_counter() - t
        t = time.perf_counter()
        genair.item_embedding.project()
        project_s = time.perf_counter() - t
        base.full_sort_predict(eval_batches[0])                # warm both
        genair.full_sort_predict(eval_batches[0])
        cached_table = genair.item_embedding._eval_table       # the cached tensor (None if not cached)
        inf: Dict[str, List[float]] = {"base": [], "genair": []}
        for r in range(args.eval_rounds):
            for b in eval_batches:
                for k in (("base", "genair") if r % 2 == 0 else ("genair", "base")):
                    t = time.perf_counter()
                    models[k].full_sort_predict(b)
                    inf[k].append(time.perf_counter() - t)
        # the same cached tensor served every timed call (no recomputation)
        table_reused = cached_table is not None and genair.item_embedding._eval_table is cached_table

    # FLOPs (multiply-adds × 2) of the projector per training step vs the CE scoring
    emb = genair.item_embedding
    lin = [m for m in emb.projector if isinstance(m, torch.nn.Linear)]
    n_rows = emb.num_items
    proj_fwd = sum(2 * n_rows * l.in_features * l.out_features for l in lin)
    # backward: weight grads of every layer + input grads of all but the first (features are frozen)
    proj_bwd = proj_fwd + sum(2 * n_rows * l.in_features * l.out_features for l in lin[1:])
    h = cfg_b["hidden_size"]
    ce_rows = cfg_b["train_batch_size"] * (int(cfg_b["mask_ratio"] * cfg_b["MAX_ITEM_LIST_LENGTH"])
                                            if backbone == "BERT4Rec" else 1)
    ce_flops = 3 * 2 * ce_rows * n_rows * h                     # logits fwd + 2 matmuls bwd

    res = {"backbone": backbone, "batches_per_epoch": n_batches, "load_per_batch": load_per_batch,
           "steps": {k: med(v) for k, v in step_t.items()}, "n_steps": {k: len(v) for k, v in step_t.items()},
           "first_call": first_call, "project_s": project_s, "table_reused": table_reused,
           "inf": {k: med(v) for k, v in inf.items()}, "n_inf": len(inf["base"]),
           "eval_users": int(len(eval_batches[0])), "alpha": alpha, "setup_s": setup_s,
           "proj_gflop": (proj_fwd + proj_bwd) / 1e9, "ce_gflop": ce_flops / 1e9,
           "n_items": n_rows, "feat_dim": emb.features.shape[1], "proj_width": lin[0].out_features, "loss_type": cfg_b["loss_type"]}
    s = res["steps"]
    print(f"  {backbone}: base {1e3 * s['base']:.1f} ms/step, genair {1e3 * s['genair']:.1f}, "
          f"genair α=0 {1e3 * s['genair α=0']:.1f}, "
          + (f"genair dense {1e3 * s['genair dense']:.1f}, " if "genair dense" in s else "")
          + f"projector alone {1e3 * s['projector']:.1f}; "
          f"loader {1e3 * load_per_batch:.1f} ms/batch; inference base {1e3 * res['inf']['base']:.1f} ms, "
          f"genair {1e3 * res['inf']['genair']:.1f} ms per {res['eval_users']} users "
          f"(setup {setup_s:.0f} s)", flush=True)
    return res


def report(results: List[dict], args, synthetic: bool) -> None:
    print(f"\n## training (median ms per step over {results[0]['n_steps']['base']} steps per variant; "
          f"ratio = variant / base)")
    dense = "genair dense" in results[0]["steps"]
    print(f"loss_type {results[0]['loss_type']}")
    print("| backbone | batches/epoch | base ms | genair ms | ratio | genair α=0 ms | ratio α=0 | "
          + ("genair dense ms | ratio dense | " if dense else "")
          + "projector (whole table) fwd+bwd ms | loader ms/batch | epoch base s | epoch genair s | epoch ratio | goal ≤ 1.15 |")
    print("|---|--:|--:|--:|--:|--:|--:|" + ("--:|--:|" if dense else "") + "--:|--:|--:|--:|--:|:-:|")
    for r in results:
        s, L, nb = r["steps"], r["load_per_batch"], r["batches_per_epoch"]
        eb, eg = nb * (s["base"] + L), nb * (s["genair"] + L)
        print(f"| {r['backbone']} | {nb} | {1e3 * s['base']:.1f} | {1e3 * s['genair']:.1f} | "
              f"{s['genair'] / s['base']:.2f} | {1e3 * s['genair α=0']:.1f} | {s['genair α=0'] / s['base']:.2f} | "
              + (f"{1e3 * s['genair dense']:.1f} | {s['genair dense'] / s['base']:.2f} | " if dense else "")
              + f"{1e3 * s['projector']:.1f} | {1e3 * L:.1f} | {eb:.0f} | {eg:.0f} | {eg / eb:.2f} | "
              f"{'met' if eg / eb <= 1.15 else 'NOT met'} |")
    print(f"\n## full-sort inference (median ms per batch of {results[0]['eval_users']} users over "
          f"{results[0]['n_inf']} calls each, cached table warm; ratio = genair / base)")
    print("| backbone | base ms | genair ms | ratio | goal ≤ 1.05 | first genair call ms (builds cache) | "
          "project() ms | cache reused |")
    print("|---|--:|--:|--:|:-:|--:|--:|:-:|")
    for r in results:
        i = r["inf"]
        print(f"| {r['backbone']} | {1e3 * i['base']:.1f} | {1e3 * i['genair']:.1f} | {i['genair'] / i['base']:.3f} | "
              f"{'met' if i['genair'] / i['base'] <= 1.05 else 'NOT met'} | {1e3 * r['first_call']:.1f} | "
              f"{1e3 * r['project_s']:.1f} | {r['table_reused']} |")
    r0 = results[0]
    print(f"\nprojector per training step: {r0['n_items']} rows × {r0['feat_dim']} → MLP → 128: "
          f"{r0['proj_gflop']:.2f} GFLOP (forward + backward); CE scoring (logits over all items, fwd+bwd): "
          + ", ".join(f"{r['backbone']} {r['ce_gflop']:.2f}" for r in results) + " GFLOP")
    # what the projector would have to run at for the epoch goal, against this thread's rate on
    # the projector's own largest product (forward of its first Linear over every row)
    rate = gemm_rate(r0["n_items"], r0["feat_dim"], r0["proj_width"])
    print(f"one thread on [{r0['n_items']}, {r0['feat_dim']}] x [{r0['feat_dim']}, {r0['proj_width']}] (the projector's "
          f"first product): {rate:.1f} GFLOP/s")
    print("| backbone | projector GFLOP/s achieved | GFLOP/s it needs for epoch ratio ≤ 1.15 | needed / this thread's rate |")
    print("|---|--:|--:|--:|")
    for r in results:
        s, L = r["steps"], r["load_per_batch"]
        need = r["proj_gflop"] / (0.15 * (s["base"] + L))   # projector within 15 % of a base step, nothing else extra
        print(f"| {r['backbone']} | {r['proj_gflop'] / s['projector']:.1f} | {need:.1f} | {need / rate:.2f}x |")
    print(f"calibration α = {r0['alpha']}"
          + ("; FEATURES ARE SYNTHETIC (random, ml-100k's PCA sizes 163 + 90): "
             "timings only" if synthetic else "; the data set's real archetype features"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="Amazon_Beauty")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--eval_batches", type=int, default=5)
    parser.add_argument("--eval_rounds", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="smoke: 10 steps, 1 eval batch")
    parser.add_argument("--loss_type", default="CE", choices=("CE", "BPR"),
                        help="ranking loss of every variant (BPR: one sampled negative per positive)")
    parser.add_argument("--max_len", type=int, default=0,
                        help="MAX_ITEM_LIST_LENGTH (0: the properties' value)")
    parser.add_argument("--batch_size", type=int, default=0,
                        help="train_batch_size (0: the properties' value, 128); the projector's cost "
                             "per step does not grow with it, the backbone's does")
    parser.add_argument("--projector_dtype", default="float32", choices=("float32", "bfloat16"),
                        help="GenAIR's projector_dtype (bfloat16: the projector's Linear maps in bf16)")
    parser.add_argument("--synthetic", action="store_true",
                        help="time random features of ml-100k's PCA sizes instead of the data set's real file")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.rounds, args.eval_batches, args.eval_rounds = 10, 2, 2, 1, 2
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.WARNING)

    tmp = tempfile.TemporaryDirectory(prefix="bench_model_cost_")
    extra = {"show_progress": False, "state": "WARNING", "torch_threads": 1, "eval_batch_size": 1024,
             "eval_negatives": 0, "checkpoint_dir": str(Path(tmp.name) / "saved"), "loss_type": args.loss_type}
    if args.max_len:
        extra["MAX_ITEM_LIST_LENGTH"] = args.max_len
    if args.batch_size:
        extra["train_batch_size"] = args.batch_size
    genair_extra: dict = {"projector_dtype": args.projector_dtype}
    real_file = DATASET_DIR / args.dataset / f"{args.dataset}.archetype"
    if not real_file.exists() and not args.synthetic:
        parser.error(f"{real_file} does not exist: run `python -m recbole_genair.archetypes "
                     f"--dataset={args.dataset}` first, or pass --synthetic to time random features of its shape")
    synthetic = args.synthetic
    if synthetic:
        path = Path(tmp.name) / f"{args.dataset}.archetype"
        n = write_synthetic_features(DATASET_DIR / args.dataset / f"{args.dataset}.item", path)
        genair_extra["archetype_feature_file"] = str(path)
        print(f"# synthetic features for timing only: {n} items × ({SYNTH_DIMS[0]} + {SYNTH_DIMS[1]}) dims -> {path}")
    print(f"# {args.dataset}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, "
          f"torch {torch.__version__}, 1 thread, {args.steps} timed steps after {args.warmup} warm-up, "
          f"{args.rounds} rounds", flush=True)
    results = [bench_backbone(b, args, extra, genair_extra) for b in args.backbones.split(",")]
    report(results, args, synthetic)
    tmp.cleanup()


if __name__ == "__main__":
    main()
