"""The archetype preprocessing step: ``.item`` file -> archetypes -> RecBole feature file.

Outputs, for data set ``NAME`` in ``dataset/NAME/``:

* ``archetypes/NAME.archetypes.jsonl`` — per item: token, archetype text, generated ids,
  prompt length, whether a stop token ended it (committed: users read them, and the
  embeddings can be rebuilt from them with one teacher-forced pass, ``--from-texts``);
* ``archetypes/NAME.archetypes.meta.json`` — model identity, prompt, generation and PCA
  settings, feature sizes;
* ``archetypes/cache/<key>/`` — resumable shards and ``raw.npz``, the raw pooled prefill
  and decoding embeddings (not committed);
* ``NAME.archetype`` — the final frozen features as a RecBole atomic file keyed by
  ``item_id:token`` with ``prefill_emb:float_seq`` and ``decoding_emb:float_seq`` (PCA of each,
  Eq. 7), which the GenAIR data set aligns to RecBole's internal ids by token;
* ``NAME.cooc.npz`` — item co-occurrence counts in users' training sequences (Eq. 10).

Where the LLM runs: in this process (``workers=1``), in spawned processes (``workers=N``), or
in Ray actors on a cluster or a local Ray (``ray_address``).  Workers only compute and return
results; this process commits every batch as it arrives (:class:`ShardStore`), so a kill loses
only the batches in flight and no disk is shared with the workers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import random
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from recbole_genair.archetypes.extract import generate_and_embed, teacher_forced
from recbole_genair.archetypes.llm import DEFAULT_LLM, GGUF_CACHE_DIR, LoadedLLM, encode_prompts, load_llm
from recbole_genair.archetypes.prompt import PromptSpec, build_prompt, check_fields, prompt_spec_for, read_item_file
from recbole_genair.archetypes.store import (MISSING_CRC, Shard, ShardStore, atomic_write_text, make_shard,
                                             prompt_checksum, prompt_matches, settings_key)
from recbole_genair.paths import DATASET_DIR

logger = logging.getLogger(__name__)

FEATURE_SUFFIX = "archetype"
PREFILL_FIELD = "prefill_emb"
DECODING_FIELD = "decoding_emb"


class ArchetypeError(RuntimeError):
    """The archetype step cannot finish; the message says why and what to run."""


@dataclass
class GenerationSettings:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 2020
    dtype: str = "float32"

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ArchetypeJob:
    dataset: str
    llm: str = DEFAULT_LLM
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    batch_size: int = 32   # the committed texts were made at 32: the cache key includes it
    pca: float = 0.95
    device: str = "cpu"
    workers: int = 1
    threads: int = 1
    ray_address: Optional[str] = None  # Ray workers: a cluster's address, or "local"
    dataset_dir: Path = DATASET_DIR
    limit: Optional[int] = None   # only the first N items (smoke runs); final files are not written
    gguf_cache: Optional[Path] = GGUF_CACHE_DIR  # de-quantised GGUF copies (None: keep none)

    @property
    def data_dir(self) -> Path:
        return Path(self.dataset_dir) / self.dataset


def load_prompts(job: ArchetypeJob, spec: PromptSpec) -> tuple[List[str], List[str]]:
    path = job.data_dir / f"{job.dataset}.item"
    names, rows = read_item_file(path)
    check_fields(spec, names, path)
    tokens = [r["item_id"] for r in rows]
    if len(set(tokens)) != len(tokens):
        raise ArchetypeError(f"{path}: duplicate item_id rows")
    return tokens, [build_prompt(r, spec) for r in rows]


def plan_batches(tokens: Sequence[str], prompt_ids: Sequence[Sequence[int]], batch_size: int) -> List[List[int]]:
    """Batches of row indices, by prompt length then token, so padding stays small."""
    order = sorted(range(len(tokens)), key=lambda i: (len(prompt_ids[i]), tokens[i]))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


# --- worker side -------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(llm: str, device: str, dtype: str, threads: int, gguf_cache: Optional[Path]) -> None:
    """Load the LLM once per process (kept for later jobs with the same model)."""
    torch.set_num_threads(threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if _WORKER.get("key") != (llm, device, dtype):
        _WORKER["llm"] = load_llm(llm, device=device, dtype=dtype, gguf_cache=gguf_cache)
        _WORKER["key"] = (llm, device, dtype)


def _in_worker(model_args: tuple, fn, task):
    """``fn(task)`` in a worker process (or Ray actor) whose LLM is ``model_args``."""
    _WORKER["args"] = model_args
    return fn(task)


def _worker_llm() -> LoadedLLM:
    """This worker's LLM, loaded at its first use and then kept (the in-process path has
    loaded it up front, :func:`_job_llm`)."""
    if "args" in _WORKER:
        _init_worker(*_WORKER["args"])
    return _WORKER["llm"]


def _model_args(job: ArchetypeJob) -> tuple:
    """What a worker needs to load the job's LLM (:func:`_init_worker`'s arguments)."""
    return job.llm, job.device, job.generation.dtype, job.threads, job.gguf_cache


def _job_llm(job: ArchetypeJob) -> LoadedLLM:
    """The job's LLM, loaded in this process (with the job's thread count) as a worker would."""
    _init_worker(*_model_args(job))
    return _WORKER["llm"]


_DRIVER: dict = {}


def _driver_llm(job: ArchetypeJob) -> LoadedLLM:
    """What the driver needs of the LLM: tokenizer, stop tokens, identity.

    When workers run the model (spawned processes or Ray actors) the driver builds it without
    weights (``load_llm(weights=False)``), so a driver without the workers' GPU or memory can
    run the job; otherwise the driver is the worker and loads it whole.
    """
    if not (job.ray_address or job.workers > 1):
        return _job_llm(job)
    if _DRIVER.get("key") != job.llm:
        _DRIVER["llm"], _DRIVER["key"] = load_llm(job.llm, weights=False, gguf_cache=job.gguf_cache), job.llm
    return _DRIVER["llm"]


def _teacher_force_batch(task) -> tuple:
    """``(key, prefill, decoding)`` of prompts + given generated ids, in one forward pass."""
    key, prompt_ids, generated = task
    llm: LoadedLLM = _worker_llm()
    pre, dec = teacher_forced(llm.model, prompt_ids, generated, llm.pad_id)
    return key, pre.numpy(), dec.numpy()


def _teacher_force_batches(job: ArchetypeJob, batches, prompt_ids, generated, desc: str):
    """``(n, rows, prefill, decoding)`` for each batch ``n`` of row indices, teacher-forced on the
    job's workers (completion order); ``generated[i]`` holds row ``i``'s generated ids."""
    tasks = [(n, [prompt_ids[i] for i in rows], [generated[i] for i in rows]) for n, rows in enumerate(batches)]
    for n, pre, dec in tqdm(_map(job, _teacher_force_batch, tasks), total=len(tasks), desc=desc, unit="batch"):
        yield n, batches[n], pre, dec


def item_seed(seed: int, token: str) -> int:
    """The sampling seed of one item: the run's seed and the item token, nothing else."""
    return zlib.crc32(f"{seed}\t{token}".encode())


def _extract(llm: LoadedLLM, prompt_ids, gen: GenerationSettings, tokens: Sequence[str]):
    """Generate for one batch; when sampling, each item draws from its own generator
    (:func:`item_seed`), so an item retried alone, in another batch or under ``--limit``
    samples what it would have in the whole run."""
    generator = None
    if gen.do_sample:
        device = next(llm.model.parameters()).device
        generator = [torch.Generator(device=device).manual_seed(item_seed(gen.seed, t)) for t in tokens]
    return generate_and_embed(llm.model, prompt_ids, max_new_tokens=gen.max_new_tokens,
                              stop_ids=llm.stop_ids, pad_id=llm.pad_id, do_sample=gen.do_sample,
                              temperature=gen.temperature, top_p=gen.top_p, generator=generator)


def _run_batch(task) -> tuple[int, Shard, List[str]]:
    """Extract one batch: ``(batch_no, shard, failed tokens)``; failing items are retried one by one.

    Workers only compute; the driver commits each returned shard (:func:`run`), so workers
    need no access to the driver's disk (Ray workers on other machines).
    """
    batch_no, tokens, prompt_ids, gen = task
    llm: LoadedLLM = _worker_llm()
    rows, failed = [], {}
    try:
        res = _extract(llm, prompt_ids, gen, tokens)
        rows = list(range(len(tokens)))
        results = [(res.prefill[i], res.decoding[i], res.generated[i], res.stopped[i]) for i in rows]
    except (RuntimeError, ValueError) as exc:  # e.g. out of memory: fall back to one by one, loudly
        logger.warning("batch %d failed (%s); retrying its %d items one by one", batch_no, exc, len(tokens))
        results = []
        for i, ids in enumerate(prompt_ids):
            try:
                one = _extract(llm, [ids], gen, [tokens[i]])
                rows.append(i)
                results.append((one.prefill[0], one.decoding[0], one.generated[0], one.stopped[0]))
            except (RuntimeError, ValueError) as err:
                failed[tokens[i]] = f"{type(err).__name__}: {err}"
    keep_rows, keep = [], []
    for i, r in zip(rows, results):
        if not (torch.isfinite(r[0]).all() and torch.isfinite(r[1]).all()):
            failed[tokens[i]] = "non-finite hidden states"
        else:
            keep_rows.append(i)
            keep.append(r)
    h = llm.hidden_size
    shard = make_shard([tokens[i] for i in keep_rows],
                       np.stack([k[0].numpy() for k in keep]) if keep else np.zeros((0, h), np.float32),
                       np.stack([k[1].numpy() for k in keep]) if keep else np.zeros((0, h), np.float32),
                       [len(prompt_ids[i]) for i in keep_rows], [k[2] for k in keep],
                       [k[3] for k in keep], failed, prompt_crc=[prompt_checksum(prompt_ids[i]) for i in keep_rows])
    return batch_no, shard, list(failed)


# --- driver -----------------------------------------------------------------------------
def job_settings(job: ArchetypeJob, llm: LoadedLLM, spec: PromptSpec) -> dict:
    template = getattr(llm.tokenizer, "chat_template", None)
    return {"llm": llm.identity(), "prompt": spec.as_dict(),
            "chat_template_crc": zlib.crc32(template.encode()) if template else None,
            "generation": job.generation.as_dict(), "batch_size": job.batch_size,
            # a --limit run plans its batches over fewer items: its results stay out of the full run's
            **({"limit": job.limit} if job.limit else {}),
            # sampled runs of earlier versions seeded each batch, not each item: never mixed in
            **({"sampling_seeds": "per item"} if job.generation.do_sample else {})}


def run(job: ArchetypeJob) -> dict:
    """Generate (resuming), then write texts, raw embeddings, features and co-occurrence."""
    spec = prompt_spec_for(job.dataset)
    tokens, prompts = load_prompts(job, spec)
    if job.limit:
        tokens, prompts = tokens[:job.limit], prompts[:job.limit]
    logger.info("loading LLM %s", job.llm)
    llm = _driver_llm(job)
    prompt_ids = encode_prompts(llm.tokenizer, prompts)
    settings = job_settings(job, llm, spec)
    cache_root = job.data_dir / "archetypes" / "cache"
    store = ShardStore(cache_root, settings)
    expected = expected_prompts(tokens, prompt_ids)
    cached = store.collect(expected)
    done = set(cached.results)
    if cached.stale:
        logger.info("%d item(s) have another prompt than when they were generated (metadata edited?): "
                    "generating them again", len(cached.stale))
    done |= seed_from_texts(job, store, tokens, prompt_ids, done)
    batches = plan_batches(tokens, prompt_ids, job.batch_size)
    tasks = []
    for b, rows in enumerate(batches):
        todo = [i for i in rows if tokens[i] not in done]
        if todo:
            tasks.append((b, [tokens[i] for i in todo], [prompt_ids[i] for i in todo], job.generation))
    remaining = sum(len(t[1]) for t in tasks)
    logger.info("cache %s: %d/%d items done, %d to go", store.dir, len(tokens) - remaining, len(tokens), remaining)
    failed: List[str] = []
    t0 = time.time()
    with tqdm(total=len(tokens), initial=len(tokens) - remaining, desc=f"archetypes {job.dataset}",
              unit="item", dynamic_ncols=True) as bar:
        for batch_no, shard, bad in _map(job, _run_batch, tasks):
            store.write(batch_no, shard)  # committed as it arrives: a kill loses only batches in flight
            failed += bad
            bar.update(len(shard.tokens) + len(bad))
    elapsed = time.time() - t0
    results, failures, by_length, _ = store.collect(expected)
    if by_length:
        logger.info("%d cached item(s) were written before prompt checksums were kept: matched by "
                    "prompt length", len(by_length))
    missing = [t for t in tokens if t not in results]
    if failures or missing:
        raise ArchetypeError(
            f"{len(missing)} item(s) have no archetype; failed ids (first 20): "
            + ", ".join(f"{t} ({failures.get(t, 'not processed')})" for t in missing[:20])
            + ". Re-run the same command to retry them.")
    summary = {"items": len(tokens), "generated_now": remaining, "seconds": round(elapsed, 1),
               "cache": str(store.dir)}
    if job.limit:
        logger.info("--limit given: final files are not written")
        return summary
    rows = [results[t] for t in tokens]
    prefill = np.stack([r[0] for r in rows])
    decoding = np.stack([r[1] for r in rows])
    np.savez(store.dir / "raw.npz", item_id=np.array(tokens, dtype=str), prefill=prefill, decoding=decoding)
    write_texts(job, tokens, rows, llm, settings)
    summary.update(write_features(job, tokens, prefill, decoding, settings))
    summary.update(write_cooccurrence(job))
    return summary


def texts_path(data_dir: Path, dataset: str) -> Path:
    return data_dir / "archetypes" / f"{dataset}.archetypes.jsonl"


def meta_path(data_dir: Path, dataset: str) -> Path:
    """The run record beside the texts: settings, their cache key, PCA outcome."""
    return data_dir / "archetypes" / f"{dataset}.archetypes.meta.json"


class TextsRecordMismatch(ArchetypeError):
    """The texts file is not the one its run record describes."""


def texts_run_record(job: ArchetypeJob) -> Optional[dict]:
    """The run record of the texts file (``None``: no texts file or no record).

    An error when the record was written for other contents: a write interrupted between the
    two files (texts of one run beside the record of another) or an edit of the texts.
    Records written before they named their texts (``texts_sha1``) are taken as they are.
    """
    path, meta_file = texts_path(job.data_dir, job.dataset), meta_path(job.data_dir, job.dataset)
    if not (path.is_file() and meta_file.is_file()):
        return None
    meta = json.loads(meta_file.read_text())
    content = path.read_bytes().replace(b"\r\n", b"\n")   # as written, whatever a checkout did to line ends
    if meta.get("texts_sha1") not in (None, hashlib.sha1(content).hexdigest()):
        raise TextsRecordMismatch(
            f"{path} is not the file its run record {meta_file} describes (texts_sha1): a write "
            "interrupted between the two, or an edit; re-run the command that wrote them, or restore "
            "both from version control")
    return meta


def write_texts(job: ArchetypeJob, tokens, rows, llm: LoadedLLM, settings: dict,
                complete: bool = True) -> None:
    """The archetype texts and generated ids (all items, or the finished part when exporting)."""
    lines = []
    for token, (_, _, n_prompt, gen, stopped, crc) in zip(tokens, rows):
        text = llm.tokenizer.decode([g for g in gen if g not in llm.stop_ids], skip_special_tokens=True)
        record = {"item_id": token, "archetype": text.strip(), "n_prompt": n_prompt,
                  **({"prompt_crc": crc} if crc != MISSING_CRC else {}), "stopped": stopped, "generated_ids": gen}
        lines.append(json.dumps(record, ensure_ascii=False))
    path = texts_path(job.data_dir, job.dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    atomic_write_text(path, text)
    # the record names the contents it describes: a kill between the two writes is detected
    meta = {"dataset": job.dataset, "settings": settings, "key": settings_key(settings),
            "items": len(tokens), "complete": complete, "texts_sha1": hashlib.sha1(text.encode()).hexdigest()}
    atomic_write_text(meta_path(job.data_dir, job.dataset),
                      json.dumps(meta, indent=2, sort_keys=True, default=str))


def read_texts(path: Path) -> Dict[str, dict]:
    """``{item token: record}`` of a texts file; a malformed line is an error naming it."""
    records: Dict[str, dict] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ArchetypeError(f"{path}:{lineno}: {exc}") from exc
            records[rec["item_id"]] = rec
    return records


def export_texts(job: ArchetypeJob) -> dict:
    """Write the texts of the items generated so far (to commit a run that is not finished).

    A later ``run`` with the same settings picks them up (:func:`seed_from_texts`), so the
    expensive generation survives a fresh checkout.  Records the texts file already holds for
    the current prompts are kept even when the cache lacks them; texts made with other settings
    are never replaced (:func:`_texts_to_keep`).
    """
    spec = prompt_spec_for(job.dataset)
    tokens, prompts = load_prompts(job, spec)
    llm = _driver_llm(job)
    settings = job_settings(job, llm, spec)
    store = ShardStore(job.data_dir / "archetypes" / "cache", settings)
    prompt_ids = encode_prompts(llm.tokenizer, prompts)
    results = store.collect(expected_prompts(tokens, prompt_ids)).results
    results.update(_texts_to_keep(job, store, settings, tokens, prompt_ids, set(results)))
    done = [t for t in tokens if t in results]
    write_texts(job, done, [results[t] for t in done], llm, settings, complete=len(done) == len(tokens))
    return {"exported": len(done), "items": len(tokens), "texts": str(texts_path(job.data_dir, job.dataset))}


def _texts_to_keep(job: ArchetypeJob, store: ShardStore, settings: dict, tokens, prompt_ids,
                   done: set) -> Dict[str, tuple]:
    """Records of the texts file an export must carry over: those of current prompts that the
    cache lacks (say a fresh checkout whose cache was never seeded from them), as result rows
    without embeddings.  An export never replaces texts made with other settings, nor writes
    an empty file."""
    path = texts_path(job.data_dir, job.dataset)
    where = f"the cache for these settings ({store.dir})"
    kept: Dict[str, tuple] = {}
    if path.is_file():
        meta = texts_run_record(job)
        if meta is None or meta.get("key") != store.key:
            changes = _recorded_changes(meta, settings) if meta is not None else ["no run record"]
            raise ArchetypeError(
                f"not exported: {path} holds texts made with other settings ({'; '.join(changes)}) and "
                f"exporting {where} would replace them; export with the settings they record, or move "
                "the file away first")
        index = {t: i for i, t in enumerate(tokens)}
        kept = {t: (None, None, rec["n_prompt"], rec["generated_ids"], rec["stopped"],
                    rec.get("prompt_crc", MISSING_CRC))
                for t, rec in read_texts(path).items()
                if t in index and t not in done and same_prompt(rec, prompt_ids[index[t]])}
    if not done and not kept:
        raise ArchetypeError(f"not exported: no item has an archetype in {where}")
    return kept


def expected_prompts(tokens, prompt_ids) -> Dict[str, tuple]:
    """token -> (prompt_checksum, prompt length) of the current prompts (what a result must match)."""
    return {t: (prompt_checksum(ids), len(ids)) for t, ids in zip(tokens, prompt_ids)}


def same_prompt(record: dict, ids) -> bool:
    """Whether a texts-file record was generated from prompt ``ids`` (files written before
    checksums were kept record only the prompt's length)."""
    return prompt_matches(record.get("prompt_crc", MISSING_CRC), record["n_prompt"], (prompt_checksum(ids), len(ids)))


def seed_from_texts(job: ArchetypeJob, store: ShardStore, tokens, prompt_ids, done: set) -> set:
    """Fill the cache from a texts file made with the same settings (teacher forcing, no generation)."""
    path = texts_path(job.data_dir, job.dataset)
    try:
        meta = texts_run_record(job)
    except TextsRecordMismatch as exc:
        logger.warning("%s: not reused", exc)
        return set()
    if meta is None:
        return set()
    if meta.get("key") != store.key:
        logger.info("%s was made with other settings: not reused", path)
        return set()
    index = {t: i for i, t in enumerate(tokens)}
    records = {t: rec for t, rec in read_texts(path).items()
               if t in index and t not in done and same_prompt(rec, prompt_ids[index[t]])}
    if not records:
        return set()
    todo = [index[t] for t in records]
    chunks = [todo[s:s + job.batch_size] for s in range(0, len(todo), job.batch_size)]
    generated = {i: records[tokens[i]]["generated_ids"] for i in todo}
    for n, rows, pre, dec in _teacher_force_batches(job, chunks, prompt_ids, generated,
                                                    "archetypes from committed texts"):
        shard = make_shard([tokens[i] for i in rows], pre, dec, [len(prompt_ids[i]) for i in rows],
                           [generated[i] for i in rows], [records[tokens[i]]["stopped"] for i in rows],
                           prompt_crc=[records[tokens[i]].get("prompt_crc", MISSING_CRC) for i in rows])
        store.write(f"t{n:06d}", shard)
    return set(records)


def _settings_diff(recorded, current, path: str = "") -> List[str]:
    """``key: recorded -> current`` for each leaf setting that differs."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        return [d for k in sorted(set(recorded) | set(current))
                for d in _settings_diff(recorded.get(k), current.get(k), f"{path}{k}.")]
    return [] if recorded == current else [f"{path.rstrip('.')}: {recorded!r} -> {current!r}"]


def _recorded_changes(meta: dict, settings: dict, keys: Optional[Sequence[str]] = None) -> List[str]:
    """``key: recorded -> current`` for each setting (or each of ``keys``) that differs from the
    settings recorded in the run record ``meta``."""
    recorded = json.loads(json.dumps(meta.get("settings", {}), default=str))
    current = json.loads(json.dumps(settings, default=str))
    if keys is not None:
        recorded, current = ({k: d.get(k) for k in keys} for d in (recorded, current))
    return _settings_diff(recorded, current)


def _verify_batch(task) -> List[tuple]:
    """Regenerate one planned batch; ``(token, committed ids, regenerated ids)`` per item."""
    batch_no, tokens, prompt_ids, committed, gen = task
    res = _extract(_worker_llm(), prompt_ids, gen, tokens)
    return [(t, c, list(g)) for t, c, g in zip(tokens, committed, res.generated)]


def verify_texts(job: ArchetypeJob, sample: Optional[int] = None, seed: int = 0) -> dict:
    """Regenerate the committed texts' batches and compare the token ids (nothing is written).

    Batches are planned exactly as :func:`run` plans them (same order and size; per-item seeds),
    so a greedy run must give the committed ids; ``sample`` checks that many batches drawn at
    random (``seed``) instead of all.  The settings must be the ones recorded with the texts.
    """
    spec = prompt_spec_for(job.dataset)
    tokens, prompts = load_prompts(job, spec)
    path = texts_path(job.data_dir, job.dataset)
    meta = texts_run_record(job)
    if meta is None:
        raise ArchetypeError(f"{path} (and its .meta.json) not found: nothing to verify")
    records = read_texts(path)
    llm = _driver_llm(job)
    settings = job_settings(job, llm, spec)
    diff = _recorded_changes(meta, settings)
    if diff:
        raise ArchetypeError(f"{path} was made with other settings; pass the recorded ones "
                             f"(recorded -> given): " + "; ".join(diff))
    prompt_ids = encode_prompts(llm.tokenizer, prompts)
    planned = plan_batches(tokens, prompt_ids, job.batch_size)
    batches = list(enumerate(planned))
    if sample is not None and sample < len(batches):
        batches = sorted(random.Random(seed).sample(batches, sample))
    tasks = [(b, [tokens[i] for i in rows], [prompt_ids[i] for i in rows],
              [records[tokens[i]]["generated_ids"] if tokens[i] in records else None for i in rows],
              job.generation) for b, rows in batches]
    checked, mismatched = 0, []
    with tqdm(total=sum(len(t[1]) for t in tasks), desc=f"verify {job.dataset}", unit="item",
              dynamic_ncols=True) as bar:
        for items in _map(job, _verify_batch, tasks):
            for token, committed, regenerated in items:
                if committed is not None:  # an exported, unfinished texts file lacks some items
                    checked += 1
                    if committed != regenerated:
                        mismatched.append(token)
            bar.update(len(items))
    missing = [t for t in tokens if t not in records]
    return {"batches_checked": len(tasks), "batches_planned": len(planned),
            "items_checked": checked, "identical": checked - len(mismatched),
            "mismatched": mismatched, "not_in_texts": missing}


def _map(job: ArchetypeJob, fn, tasks):
    """``fn`` over ``tasks``, results in completion order.

    In this process (one worker), in ``job.workers`` spawned processes, or — with
    ``job.ray_address`` — in ``job.workers`` Ray actors, each holding the LLM, on a running Ray
    cluster or a local Ray (``"local"``).
    """
    if job.ray_address:
        yield from _map_ray(job, fn, tasks)
        return
    if job.workers <= 1 or len(tasks) <= 1:
        _job_llm(job)  # this process is the worker
        yield from map(fn, tasks)
        return
    # concurrent.futures, not multiprocessing.Pool: a worker killed by the system (out of
    # memory) breaks the executor with an error; a Pool replaces the process and waits forever
    # for the batch it lost.
    executor = ProcessPoolExecutor(job.workers, mp_context=mp.get_context("spawn"))
    model_args = _model_args(job)
    try:
        for future in as_completed([executor.submit(_in_worker, model_args, fn, task) for task in tasks]):
            try:
                yield future.result()
            except BrokenProcessPool as exc:
                raise ArchetypeError("a worker process died (killed by the system, e.g. out of memory?); "
                                     "the batches committed so far are kept: run the same command again "
                                     "to continue") from exc
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        for process in list((executor._processes or {}).values()):  # the batches in flight (as Pool did)
            process.terminate()


class _RayWorker:
    """A Ray actor that loads the job's LLM once, at its first batch, and runs batches on it."""

    def __init__(self, *model_args):
        self.model_args = model_args  # :func:`_model_args`

    def run(self, fn, task):
        return _in_worker(self.model_args, fn, task)  # the LLM loads at the first batch, then is kept


def _map_ray(job: ArchetypeJob, fn, tasks):
    """``fn`` over ``tasks`` on ``job.workers`` Ray actors (one GPU each on CUDA).

    The package must be importable on every node (as for Tune sweeps); workers only compute
    and return their results, which the driver commits, so no shared disk is needed.  A worker
    that dies (lost node, out of memory) or raises ends the run with :class:`ArchetypeError`;
    what was committed stays, and the same command continues.
    """
    if not tasks:
        return
    import ray
    from ray.exceptions import RayError
    from ray.util import ActorPool

    from recbole_genair.cluster import init_ray

    started = init_ray(job.ray_address, None)
    try:
        resources = {"num_cpus": job.threads, "num_gpus": 1 if job.device.startswith("cuda") else 0}
        actor = ray.remote(**resources)(_RayWorker)
        workers = [actor.remote(*_model_args(job))
                   for _ in range(max(1, min(job.workers, len(tasks))))]
        pool = ActorPool(workers)
        try:
            yield from pool.map_unordered(lambda worker, task: worker.run.remote(fn, task), tasks)
        except RayError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ArchetypeError(f"a Ray worker failed ({type(exc).__name__}: {reason}); every batch "
                                 f"finished before it is committed: run the same command again to "
                                 f"continue") from exc
    finally:
        if started:
            ray.shutdown()


def reduce_pca(matrix: np.ndarray, pca: float, seed: int = 0) -> tuple[np.ndarray, dict]:
    """PCA keeping ``pca`` of the variance (0 < pca < 1) or ``int(pca)`` components."""
    from sklearn.decomposition import PCA

    if 0 < pca < 1:
        n = float(pca)
    else:
        n = int(pca)
        if n < 1 or n > min(matrix.shape):
            raise ArchetypeError(f"--pca={pca}: need 1 <= components <= {min(matrix.shape)}")
    model = PCA(n_components=n, svd_solver="full", random_state=seed)
    out = model.fit_transform(matrix.astype(np.float64)).astype(np.float32)
    return out, {"components": int(model.n_components_),
                 "explained_variance": float(model.explained_variance_ratio_.sum())}


def feature_path(data_dir: Path, dataset: str) -> Path:
    return data_dir / f"{dataset}.{FEATURE_SUFFIX}"


def write_features(job: ArchetypeJob, tokens, prefill, decoding, settings) -> dict:
    pre, pre_info = reduce_pca(prefill, job.pca)
    dec, dec_info = reduce_pca(decoding, job.pca)
    path = feature_path(job.data_dir, job.dataset)
    lines = [f"item_id:token\t{PREFILL_FIELD}:float_seq\t{DECODING_FIELD}:float_seq"]
    for token, p, d in zip(tokens, pre, dec):
        lines.append(token + "\t" + " ".join(f"{v:.6g}" for v in p) + "\t" + " ".join(f"{v:.6g}" for v in d))
    atomic_write_text(path, "\n".join(lines) + "\n")
    info = {"features": str(path), "pca": job.pca, "prefill_dims": pre_info, "decoding_dims": dec_info}
    meta_file = meta_path(job.data_dir, job.dataset)
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {"settings": settings}
    meta["features"] = {**info, "features": path.name}   # next to the data set; no machine paths in the record
    atomic_write_text(meta_file, json.dumps(meta, indent=2, sort_keys=True, default=str))
    return info


def write_cooccurrence(job: ArchetypeJob) -> dict:
    """Co-occurrence of items in users' training sequences (last two items held out)."""
    from recbole_genair.data.cooccurrence import cooccurrence_counts, save_cooccurrence
    from recbole_genair.data.atomic import read_inter_columns

    users, items, times, item_tokens = read_inter_columns(job.data_dir / f"{job.dataset}.inter")
    counts = cooccurrence_counts(users, items, times, n_items=len(item_tokens), holdout=2)
    path = job.data_dir / f"{job.dataset}.cooc.npz"
    save_cooccurrence(path, counts, item_tokens)
    return {"cooccurrence": str(path), "pairs": int(counts.nnz // 2)}


TEACHER_FORCING_KEYS = ("llm", "prompt", "chat_template_crc")  # job_settings that shape the hidden states


def rebuild_from_texts(job: ArchetypeJob) -> dict:
    """Recompute both embeddings from the committed generated ids (teacher forcing), then PCA."""
    spec = prompt_spec_for(job.dataset)
    tokens, prompts = load_prompts(job, spec)
    path = texts_path(job.data_dir, job.dataset)
    if not path.is_file():
        raise ArchetypeError(f"{path} not found: generate first with "
                             f"`python -m recbole_genair.archetypes --dataset={job.dataset}`")
    records = read_texts(path)
    missing = [t for t in tokens if t not in records]
    if missing:
        raise ArchetypeError(f"{path}: no archetype for {len(missing)} items, e.g. {missing[:10]}")
    llm = _driver_llm(job)
    settings = job_settings(job, llm, spec)
    # the hidden states must come from the LLM and prompt the texts were generated with (the
    # meta file keeps describing them); generation settings do not enter teacher forcing
    meta = texts_run_record(job)
    if meta is None:
        raise ArchetypeError(f"{meta_path(job.data_dir, job.dataset)} not found: which LLM and prompt "
                             f"made {path} is unknown")
    diff = _recorded_changes(meta, settings, TEACHER_FORCING_KEYS)
    if diff:
        raise ArchetypeError(f"{path} was generated with another LLM or prompt (recorded -> given): "
                             + "; ".join(diff))
    prompt_ids = encode_prompts(llm.tokenizer, prompts)
    for t, ids in zip(tokens, prompt_ids):
        if not same_prompt(records[t], ids):
            raise ArchetypeError(f"item {t}: its prompt is not the one the texts file recorded (now "
                                 f"{len(ids)} tokens, recorded {records[t]['n_prompt']}): different LLM, "
                                 "prompt or item file")
    pre = np.zeros((len(tokens), llm.hidden_size), np.float32)
    dec = np.zeros_like(pre)
    generated = [records[t]["generated_ids"] for t in tokens]
    for _, rows, p, d in _teacher_force_batches(job, plan_batches(tokens, prompt_ids, job.batch_size),
                                                prompt_ids, generated, "teacher-forced"):
        pre[rows], dec[rows] = p, d
    info = write_features(job, tokens, pre, dec, settings)
    info.update(write_cooccurrence(job))
    return info
