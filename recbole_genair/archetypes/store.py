"""A resumable, crash-safe store of per-batch extraction results.

Every finished batch is written as one ``.npz`` shard through a temporary file and
``os.replace``, so a killed run (even ``kill -9``) loses at most the batch in flight and a
re-run continues where it stopped.  The store directory is keyed by a hash of everything
that changes the outputs (model, prompt, generation settings), so results made with other
settings are never mixed in.  Within one directory an item counts as done only if its prompt
is still the one it was generated from (a CRC-32 of the prompt's token ids per row): editing an
item's metadata makes it due again.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional

import numpy as np


MISSING_CRC = -1   # rows written before prompt checksums were kept: matched by prompt length


def prompt_checksum(ids) -> int:
    """CRC-32 of a prompt's token ids: which prompt a cached or committed result was made from."""
    return zlib.crc32(np.asarray(ids, dtype=np.int64).tobytes())


def prompt_matches(crc: int, n_prompt: int, expected: tuple) -> bool:
    """Whether a result recorded with prompt checksum ``crc`` and length ``n_prompt`` was made
    from the prompt ``expected`` = (prompt_checksum, length); results recorded before checksums
    were kept (``MISSING_CRC``) can only be matched by length."""
    return crc == expected[0] if crc != MISSING_CRC else n_prompt == expected[1]


class Collected(NamedTuple):
    """What :meth:`ShardStore.collect` finds."""

    results: Dict[str, tuple]   # token -> (prefill, decoding, n_prompt, generated, stopped, prompt_crc)
    failures: Dict[str, str]    # token -> error message, for tokens without a result
    by_length: set              # tokens matched by prompt length only (rows without a checksum)
    stale: set                  # tokens whose rows were all made from another prompt


def settings_key(settings: dict) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@dataclass
class Shard:
    tokens: np.ndarray        # [b] item tokens (str)
    prefill: np.ndarray       # [b, H] float32
    decoding: np.ndarray      # [b, H] float32
    n_prompt: np.ndarray      # [b] int32
    prompt_crc: np.ndarray    # [b] int64 prompt_checksum of each prompt (MISSING_CRC: not recorded)
    gen_flat: np.ndarray      # concatenated generated ids, int32
    gen_offsets: np.ndarray   # [b+1] int64
    stopped: np.ndarray       # [b] bool
    failed: np.ndarray        # [f] item tokens whose extraction failed
    errors: np.ndarray        # [f] error messages

    def generated(self, row: int) -> List[int]:
        return self.gen_flat[self.gen_offsets[row]:self.gen_offsets[row + 1]].tolist()


class ShardStore:
    """``<root>/<key>/meta.json`` plus ``batch_<b>[.<n>].npz`` shards, each written once."""

    def __init__(self, root: Path, settings: dict):
        self.settings = settings
        self.key = settings_key(settings)
        self.dir = Path(root) / self.key
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "meta.json"
        if meta.is_file():
            stored = json.loads(meta.read_text())
            if settings_key(stored["settings"]) != self.key:
                raise RuntimeError(f"{meta}: settings do not match the cache key {self.key}")
        else:
            atomic_write_text(meta, json.dumps({"key": self.key, "settings": settings}, indent=2,
                                               sort_keys=True, default=str))

    def shard_path(self, batch: int | str) -> Path:
        return self.dir / (f"batch_{batch:06d}.npz" if isinstance(batch, int) else f"batch_{batch}.npz")

    def write(self, batch: int | str, shard: Shard) -> Path:
        """Commit ``shard`` as a new file; never replaces one already there.

        A re-run writes the items a batch left unfinished (say one failed item) under that
        batch's number again: replacing the existing file would drop the items it holds.  So
        the first free name ``batch_<b>.npz``, ``batch_<b>.1.npz``, ... is taken, with
        ``os.link`` (which fails rather than overwrite) after the data are on disk.
        """
        first = self.shard_path(batch)
        tmp = first.with_name(f".{first.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: getattr(shard, k) for k in Shard.__dataclass_fields__})
            fh.flush()
            os.fsync(fh.fileno())
        try:
            for attempt in itertools.count():
                path = first if attempt == 0 else first.with_name(f"{first.stem}.{attempt}.npz")
                try:
                    os.link(tmp, path)
                    return path
                except FileExistsError:
                    continue
        finally:
            tmp.unlink()

    def shards(self) -> Iterable[Shard]:
        for path in sorted(self.dir.glob("batch_*.npz")):
            with np.load(path, allow_pickle=False) as data:
                values = {k: data[k] for k in Shard.__dataclass_fields__ if k in data.files}
            values.setdefault("prompt_crc", np.full(len(values["tokens"]), MISSING_CRC, dtype=np.int64))
            yield Shard(**values)

    def done_tokens(self, expected: Optional[Dict[str, tuple]] = None) -> set:
        return set(self.collect(expected).results)

    def collect(self, expected: Optional[Dict[str, tuple]] = None) -> Collected:
        """The results in the store, their failures, and which matched how.

        With ``expected`` (token -> (prompt_checksum, prompt length) of the current prompts) only
        rows made from those prompts count (:func:`prompt_matches`); a row written before
        checksums were kept counts by prompt length and its token is listed in ``by_length``;
        a token with rows of other prompts only is listed in ``stale``.
        """
        results: Dict[str, tuple] = {}
        failures: Dict[str, str] = {}
        by_length: set = set()
        stale: set = set()
        for shard in self.shards():
            for row, token in enumerate(shard.tokens.tolist()):
                crc, n_prompt = int(shard.prompt_crc[row]), int(shard.n_prompt[row])
                if expected is not None:
                    if token not in expected:
                        continue      # not an item now
                    if not prompt_matches(crc, n_prompt, expected[token]):
                        stale.add(token)  # made from a prompt that has changed since
                        continue
                    if token in results and crc == MISSING_CRC:
                        continue      # a checksummed row of this prompt wins
                    (by_length.add if crc == MISSING_CRC else by_length.discard)(token)
                results[token] = (shard.prefill[row], shard.decoding[row], n_prompt,
                                  shard.generated(row), bool(shard.stopped[row]), crc)
            for token, err in zip(shard.failed.tolist(), shard.errors.tolist()):
                if token not in results:
                    failures[token] = err
        for token in results:
            failures.pop(token, None)
        return Collected(results, failures, by_length, stale - set(results))


def make_shard(tokens: List[str], prefill: np.ndarray, decoding: np.ndarray, n_prompt: List[int],
               generated: List[List[int]], stopped: List[bool],
               failed: Optional[Dict[str, str]] = None, *, prompt_crc: List[int]) -> Shard:
    lengths = [len(g) for g in generated]
    offsets = np.zeros(len(generated) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    flat = np.array([t for g in generated for t in g], dtype=np.int32)
    failed = failed or {}
    return Shard(tokens=np.array(tokens, dtype=str), prefill=prefill.astype(np.float32),
                 decoding=decoding.astype(np.float32), n_prompt=np.array(n_prompt, dtype=np.int32),
                 prompt_crc=np.array(prompt_crc, dtype=np.int64).reshape(len(tokens)),
                 gen_flat=flat, gen_offsets=offsets, stopped=np.array(stopped, dtype=bool),
                 failed=np.array(list(failed.keys()), dtype=str),
                 errors=np.array(list(failed.values()), dtype=str))
