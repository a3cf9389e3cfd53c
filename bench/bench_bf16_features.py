"""Benchmark: does ``--dtype=bfloat16`` (the 2.7x faster archetype step on AMX CPUs) cost accuracy?

``bench_extraction.py --bf16`` shows the speed and that bf16 moves the greedy continuations
(prefill embeddings agree to cos > 0.9999; most rows' generated tokens change).  This script
checks what that does downstream, on a whole data set:

1. copies ``dataset/NAME/NAME.inter`` and ``NAME.item`` into ``--work`` (never touching the
   committed features) and runs the archetype step there with the committed run's settings
   except ``dtype: bfloat16`` (resumable: re-running continues the keyed cache);
2. compares the bf16 archetype texts with the committed (float32) ones item by item;
3. trains GenAIR-``--model`` on the committed float32 features and on the bf16 features with
   the same seed and settings (``quick_start.run``: early stopping on valid NDCG@10) and
   prints valid/test HR@10 and NDCG@10 side by side.

Run from the project root (1 thread; ~15 min extraction + two ml-100k training runs):

    python bench/bench_bf16_features.py                       # ml-100k, SASRec
    python bench/bench_bf16_features.py --model GRU4Rec --work saved/bench_bf16
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from recbole_genair.archetypes import pipeline
from recbole_genair.paths import DATASET_DIR
from recbole_genair.quick_start import run

METRICS = ("hit@10", "ndcg@10")


def committed_settings(dataset: str) -> dict:
    meta = pipeline.meta_path(DATASET_DIR / dataset, dataset)
    if not meta.is_file():
        raise SystemExit(f"{meta}: no committed archetype run to compare with")
    return json.loads(meta.read_text())["settings"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--work", default="saved/bench_bf16", help="data root for the bf16 copy")
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args()
    torch.set_num_threads(1)

    settings = committed_settings(args.dataset)
    gen = dict(settings["generation"], dtype="bfloat16")
    work = Path(args.work)
    target = work / args.dataset
    target.mkdir(parents=True, exist_ok=True)
    for suffix in ("inter", "item"):
        src = DATASET_DIR / args.dataset / f"{args.dataset}.{suffix}"
        if not (target / src.name).is_file():
            shutil.copy(src, target / src.name)

    job = pipeline.ArchetypeJob(dataset=args.dataset, batch_size=int(settings["batch_size"]),
                                generation=pipeline.GenerationSettings(**gen), dataset_dir=work)
    t0 = time.perf_counter()
    summary = pipeline.run(job)
    print(f"# bf16 archetype step: {summary['items']} items, {summary['generated_now']} generated now "
          f"in {time.perf_counter() - t0:.0f} s; PCA kept {summary['prefill_dims']['components']} prefill + "
          f"{summary['decoding_dims']['components']} decoding dims", flush=True)

    fp32 = pipeline.read_texts(pipeline.texts_path(DATASET_DIR / args.dataset, args.dataset))
    bf16 = pipeline.read_texts(pipeline.texts_path(target, args.dataset))
    common = sorted(set(fp32) & set(bf16))
    same_ids = sum(fp32[t]["generated_ids"] == bf16[t]["generated_ids"] for t in common)
    prefix = [next((k for k, (a, b) in enumerate(zip(fp32[t]["generated_ids"], bf16[t]["generated_ids"]))
                    if a != b), min(len(fp32[t]["generated_ids"]), len(bf16[t]["generated_ids"])))
              for t in common]
    print(f"# texts: {same_ids}/{len(common)} items generate identical tokens in bf16 and fp32; "
          f"mean tokens before the first difference {sum(prefix) / len(prefix):.1f} "
          f"(max_new_tokens {gen['max_new_tokens']})", flush=True)

    common_cfg = {"seed": args.seed, "show_progress": False, "torch_threads": 1}
    rows = {}
    for label, root in (("float32 (committed)", DATASET_DIR), ("bfloat16", work)):
        t0 = time.perf_counter()
        rows[label] = run(args.model, args.dataset, "genair", config_dict=dict(common_cfg, data_path=str(root)),
                          saved=False)
        print(f"  {label}: trained in {time.perf_counter() - t0:.0f} s", flush=True)

    print(f"\n## GenAIR-{args.model} on {args.dataset}, seed {args.seed}: float32 vs bfloat16 archetype features")
    print("| features | " + " | ".join(f"valid {m} | test {m}" for m in METRICS) + " |")
    print("|---|" + "--:|" * (2 * len(METRICS)))
    for label, result in rows.items():
        cells = " | ".join(f"{result['best_valid_result'][m]:.4f} | {result['test_result'][m]:.4f}"
                           for m in METRICS)
        print(f"| {label} | {cells} |")


if __name__ == "__main__":
    main()
