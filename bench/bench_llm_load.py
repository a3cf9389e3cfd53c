"""Benchmark: loading the GGUF LLM directly vs through its kept de-quantised copy.

``load_llm`` de-quantises a GGUF file once into ``--gguf_cache`` (default
``~/.cache/recbole_genair/gguf``) and later loads read that copy.  This script times both
paths on the offline default SmolLM2-135M-Instruct, in one process, alternating, medians over
rounds, and checks that the two give the same weights and prompt token ids.  Run from the
project root (the first round makes the copy in a temporary directory if needed):

    python bench/bench_llm_load.py               # 2 rounds, 1 thread
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from recbole_genair.archetypes.llm import encode_prompts, load_llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        start = time.perf_counter()
        load_llm(gguf_cache=cache)
        print(f"first load, de-quantising and writing the copy: {time.perf_counter() - start:.1f} s")
        direct, copy = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            a = load_llm(gguf_cache=None)
            direct.append(time.perf_counter() - start)
            start = time.perf_counter()
            b = load_llm(gguf_cache=cache)
            copy.append(time.perf_counter() - start)
        sd_a, sd_b = a.model.state_dict(), b.model.state_dict()
        same_weights = sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
        prompts = ["The item name is Toy Story. What potential users align best with this item?"]
        same_tokens = encode_prompts(a.tokenizer, prompts) == encode_prompts(b.tokenizer, prompts)
    d, c = statistics.median(direct), statistics.median(copy)
    print(f"direct GGUF load: {d:.2f} s (median of {args.rounds}); kept copy: {c:.2f} s; "
          f"ratio {d / c:.0f}x; same weights: {same_weights}; same prompt ids: {same_tokens}")


if __name__ == "__main__":
    main()
