"""Readers of the source data sets and the writer of RecBole atomic files.

Every supported data set is turned into two RecBole atomic files,
``<out_dir>/NAME/NAME.inter`` and ``<out_dir>/NAME/NAME.item`` (tab-separated, header
``field:type``):

* ``.inter``: ``user_id:token  item_id:token  timestamp:float`` (plus ``rating:float`` for
  ml-100k), rows grouped by user, each user's rows in time order.  Where the source has no
  timestamps the 0-based position of the interaction in the user's sequence is written, so
  RecBole's ``order: TO`` leave-one-out split reproduces the source order exactly.
* ``.item``: ``item_id:token`` plus every text / metadata field the source has; only the
  items that occur in the ``.inter`` file, each of them exactly once.

Sources (see ``dataset/README.md``):

=================  ==========================================================================
name               accepted source forms (detected by the file names in the source directory)
=================  ==========================================================================
``ml-100k``        the copy inside the ``recbole`` wheel (``recbole/dataset_example/ml-100k``)
``Amazon_Beauty``  shared: ``user_sequence.txt`` + ``Amazon_Beauty.item``;
                   raw McAuley 2014: ``reviews_Beauty_5.json.gz`` + ``meta_Beauty.json.gz``
``Amazon_Fashion`` shared LLM-ESR split: ``inter.txt``;
                   raw Amazon 2018: ``AMAZON_FASHION.json.gz`` + ``meta_AMAZON_FASHION.json.gz``
``Yelp``           shared LLM-ESR split: ``inter.txt``;
                   raw: ``yelp_academic_dataset_review.json`` +
                   ``yelp_academic_dataset_business.json``
=================  ==========================================================================

Raw Amazon 2018 Fashion and raw Yelp get the LLM-ESR preprocessing
(:func:`llmesr_filter`): one single pass of a 5/5 user/item filter on the raw counts, then
users with at least 3 remaining interactions, each user's interactions sorted by time
(stable); for Yelp only reviews dated in LLM-ESR's window [2000-01-01, 2019-12-31] are
read.  Duplicate (user, item) reviews are kept, as LLM-ESR keeps them.  The McAuley 2014
Beauty file is already a 5-core and is kept whole.  Raw ids (reviewerID / asin,
user_id / business_id) are written, so the ``.item`` rows join to the metadata directly.

Value conventions in the written files: tabs, carriage returns and newlines inside values
are replaced by spaces; list-valued text fields (Amazon categories) are written like the
shared ``Amazon_Beauty.item`` does, as Python-literal items joined by ``", "``
(``'Beauty', 'Makeup', 'Face'``; :func:`parse_list_value` reads them back).  A value that
begins with a double quote is written CSV-quoted (``"`` doubled, enclosed in ``"``), the
only case in which pandas (and so RecBole) would otherwise misread it; no other quoting
is ever written, so a plain ``line.split("\\t")`` sees every other value verbatim.

Robustness: a missing source file, a malformed line or an unknown header field/type raises
:class:`DatasetFormatError` naming the file and the 1-based line number.  Output is
written into a temporary directory next to the target (same file system) and renamed into
place only when both files are complete; the temporary directory is removed on any error,
so nothing half-written is ever left behind.
"""
from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import math
import os
import re
import shutil
import tempfile
from array import array
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

import recbole_genair

__all__ = [
    "DatasetFormatError",
    "DatasetExistsError",
    "KNOWN_DATASETS",
    "RECBOLE_TYPES",
    "AtomicTable",
    "default_out_dir",
    "default_raw_dir",
    "convert",
    "read_atomic",
    "write_atomic",
    "parse_list_value",
    "format_list_value",
    "llmesr_filter",
]

PROJECT_ROOT = Path(recbole_genair.__file__).resolve().parent.parent
SHARED_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"

#: RecBole atomic-file field types this module reads and writes.
RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")

#: Minimum raw interactions per user and per item of the single LLM-ESR filter pass.
LLMESR_MIN_USER = 5
LLMESR_MIN_ITEM = 5
#: Minimum interactions a user must keep after that pass.
LLMESR_MIN_SEQ = 3
#: The review-date window of LLM-ESR's Yelp preprocessing (``data/data_process.py`` of
#: github.com/liuqidong07/LLM-ESR keeps reviews whose ``date`` string lies in it).
YELP_DATE_MIN = "2000-01-01 00:00:00"
YELP_DATE_MAX = "2019-12-31 00:00:00"

#: How many lines between two updates of a progress bar.
_PROGRESS_EVERY = 20000

_WHITESPACE_CTRL = re.compile(r" *[\t\r\n\x0b\x0c]+ *")


class DatasetFormatError(ValueError):
    """A source file is missing, malformed or has unknown fields.

    The message names the file and, for a malformed line, its 1-based line number as
    ``path:line: what is wrong``.
    """

    def __init__(self, path, message: str, line: Optional[int] = None):
        self.path = Path(path) if path is not None else None
        self.line = line
        where = "" if path is None else (f"{path}:{line}: " if line is not None else f"{path}: ")
        super().__init__(where + message)


class DatasetExistsError(FileExistsError):
    """The converted files already exist and ``force`` was not given."""


# ----------------------------------------------------------------------------------------
# Atomic files
# ----------------------------------------------------------------------------------------
@dataclass
class AtomicTable:
    """An in-memory RecBole atomic file: ``fields`` are ``(name, type)``, ``rows`` tuples
    of already formatted strings (or values turned into strings on writing)."""

    fields: List[Tuple[str, str]]
    rows: List[tuple] = field(default_factory=list)

    @property
    def names(self) -> List[str]:
        return [n for n, _ in self.fields]

    def header(self) -> str:
        return "\t".join(f"{n}:{t}" for n, t in self.fields)


def _clean(value) -> str:
    """One value as written into an atomic file (no tabs/newlines, ``None`` -> empty)."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return repr(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    text = _WHITESPACE_CTRL.sub(" ", str(value))
    if text.startswith('"'):
        text = '"' + text.replace('"', '""') + '"'
    return text


def format_list_value(values: Iterable[str]) -> str:
    """A list of strings in the shared ``Amazon_Beauty.item`` style: ``'a', 'b', "c's"``."""
    return ", ".join(repr(_WHITESPACE_CTRL.sub(" ", str(v)).strip()) for v in values
                     if v is not None and str(v).strip())


def parse_list_value(value: str) -> List[str]:
    """Inverse of :func:`format_list_value` (``""`` -> ``[]``)."""
    value = value.strip()
    if not value:
        return []
    parsed = ast.literal_eval("[" + value + "]")
    return [str(v) for v in parsed]


def write_atomic(path: Path, table: AtomicTable) -> None:
    """Write ``table`` as a RecBole atomic file at ``path`` (UTF-8, ``\\n`` line ends)."""
    width = len(table.fields)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(table.header() + "\n")
        for row in table.rows:
            if len(row) != width:
                raise ValueError(f"{path}: row {row!r} has {len(row)} values, expected {width}")
            fh.write("\t".join(_clean(v) for v in row) + "\n")


def _parse_header(path: Path, header: Sequence[str]) -> List[Tuple[str, str]]:
    fields = []
    for col in header:
        name, sep, ftype = col.partition(":")
        if not sep or not name:
            raise DatasetFormatError(path, f"header column {col!r} is not of the form name:type", 1)
        if ftype not in RECBOLE_TYPES:
            raise DatasetFormatError(
                path, f"header column {col!r} has unknown type {ftype!r} (known: "
                f"{', '.join(RECBOLE_TYPES)})", 1)
        fields.append((name, ftype))
    names = [n for n, _ in fields]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DatasetFormatError(path, f"duplicate header field(s) {dup}", 1)
    return fields


def read_atomic(path: Path, required: Sequence[str] = (), allowed: Optional[Sequence[str]] = None,
                progress: bool = False) -> AtomicTable:
    """Read a RecBole atomic file the way pandas/RecBole do (tab-separated, ``"``-quoting).

    ``required`` field names must be present; when ``allowed`` is given, any other field
    is an error ("unknown field").  Rows with the wrong number of values are errors naming
    the 1-based line number.  Values are returned as strings.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(path, "no such file")
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quotechar='"', strict=False)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetFormatError(path, "empty file (no header line)", 1) from None
        except csv.Error as exc:
            raise DatasetFormatError(path, f"cannot parse header: {exc}", 1) from None
        fields = _parse_header(path, header)
        names = [n for n, _ in fields]
        missing = [n for n in required if n not in names]
        if missing:
            raise DatasetFormatError(path, f"header lacks required field(s) {missing}", 1)
        if allowed is not None:
            unknown = [n for n in names if n not in allowed]
            if unknown:
                raise DatasetFormatError(
                    path, f"unknown field(s) {unknown} (expected a subset of {list(allowed)})", 1)
        rows = []
        bar = tqdm(desc=f"reading {path.name}", unit=" rows", disable=not progress)
        line = reader.line_num
        try:
            for row in reader:
                if not row:  # blank line
                    line = reader.line_num
                    continue
                if len(row) != len(fields):
                    raise DatasetFormatError(
                        path, f"expected {len(fields)} tab-separated values, got {len(row)}",
                        line + 1)
                rows.append(tuple(row))
                line = reader.line_num
                if len(rows) % _PROGRESS_EVERY == 0:
                    bar.update(_PROGRESS_EVERY)
        except csv.Error as exc:
            raise DatasetFormatError(path, f"cannot parse: {exc}", line + 1) from None
        finally:
            bar.close()
    return AtomicTable(fields, rows)


# ----------------------------------------------------------------------------------------
# Line readers with progress
# ----------------------------------------------------------------------------------------
def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise DatasetFormatError(path, "no such file")
    return path


def _iter_lines(path: Path, progress: bool) -> Iterator[Tuple[int, str]]:
    """``(1-based line number, line without line end)`` of a text file, ``.gz`` or not.

    The progress bar counts bytes read from disk (compressed bytes for ``.gz``).
    """
    path = _require_file(Path(path))
    size = path.stat().st_size
    with open(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if path.name.endswith(".gz") else raw
        text = io.TextIOWrapper(stream, encoding="utf-8", newline=None)
        bar = tqdm(total=size, desc=f"reading {path.name}", unit="B", unit_scale=True,
                   disable=not progress)
        done = 0
        lineno = 0
        try:
            for lineno, line in enumerate(text, start=1):
                if lineno % _PROGRESS_EVERY == 0:
                    pos = raw.tell()
                    bar.update(pos - done)
                    done = pos
                yield lineno, line.rstrip("\r\n")
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise DatasetFormatError(path, f"cannot read: {exc}", lineno + 1) from None
        finally:
            bar.update(size - done)
            bar.close()


def _json_objects(path: Path, progress: bool, python_literal: bool = False
                  ) -> Iterator[Tuple[int, dict]]:
    """``(line number, object)`` of a JSON-lines file (or of Python-dict-literal lines)."""
    for lineno, line in _iter_lines(path, progress):
        if not line.strip():
            continue
        yield lineno, _parse_object(path, lineno, line, python_literal)


def _parse_object(path: Path, lineno: int, line: str, python_literal: bool) -> dict:
    try:
        obj = ast.literal_eval(line) if python_literal else json.loads(line)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        kind = "Python dict literal" if python_literal else "JSON"
        raise DatasetFormatError(path, f"malformed {kind}: {exc}", lineno) from None
    if not isinstance(obj, dict):
        raise DatasetFormatError(path, f"expected an object, got {type(obj).__name__}", lineno)
    return obj


def _get(obj: dict, key: str, path: Path, lineno: int, kind=str):
    """A required field of a JSON record, checked for type."""
    if key not in obj:
        raise DatasetFormatError(path, f"record lacks required field {key!r}", lineno)
    value = obj[key]
    if kind is str:
        if not isinstance(value, str) or not value:
            raise DatasetFormatError(path, f"field {key!r} must be a non-empty string, got "
                                     f"{value!r}", lineno)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DatasetFormatError(path, f"field {key!r} must be a number, got {value!r}", lineno)
    return value


# ----------------------------------------------------------------------------------------
# Interaction log and the LLM-ESR preprocessing
# ----------------------------------------------------------------------------------------
class InteractionLog:
    """Raw ``(user, item, time)`` records held compactly (24 bytes a record) as integer
    codes numbered in order of first appearance, so that a multi-million-line review file
    fits in memory."""

    def __init__(self) -> None:
        self.user_index: Dict[str, int] = {}
        self.item_index: Dict[str, int] = {}
        self._users = array("q")
        self._items = array("q")
        self._times = array("d")

    def add(self, user: str, item: str, time: float) -> None:
        u = self.user_index.setdefault(user, len(self.user_index))
        i = self.item_index.setdefault(item, len(self.item_index))
        self._users.append(u)
        self._items.append(i)
        self._times.append(time)

    def __len__(self) -> int:
        return len(self._users)

    def arrays(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.frombuffer(self._users, dtype=np.int64).copy(),
                np.frombuffer(self._items, dtype=np.int64).copy(),
                np.frombuffer(self._times, dtype=np.float64).copy())

    def user_names(self) -> List[str]:
        return list(self.user_index)

    def item_names(self) -> List[str]:
        return list(self.item_index)


def chronological(log: InteractionLog, keep: Optional[np.ndarray] = None
                  ) -> List[Tuple[str, str, float]]:
    """``(user, item, time)`` rows grouped by user (users in order of first appearance in
    the raw log), each user's rows sorted by time; ties keep the raw file order."""
    users, items, times = log.arrays()
    idx = np.arange(len(users)) if keep is None else np.flatnonzero(keep)
    order = idx[np.lexsort((idx, times[idx], users[idx]))]
    unames, inames = log.user_names(), log.item_names()
    return [(unames[u], inames[i], t) for u, i, t in
            zip(users[order].tolist(), items[order].tolist(), times[order].tolist())]


def llmesr_filter(log: InteractionLog, min_user: int = LLMESR_MIN_USER,
                  min_item: int = LLMESR_MIN_ITEM, min_seq: int = LLMESR_MIN_SEQ
                  ) -> List[Tuple[str, str, float]]:
    """The LLM-ESR preprocessing, as one single (not iterated) pass.

    1. Count interactions per user and per item on the *raw* log.
    2. Keep the interactions whose user has ``>= min_user`` and whose item has
       ``>= min_item`` raw interactions (one pass: the counts are not recomputed, so an
       item may end with fewer than ``min_item`` interactions).
    3. Keep the users with at least ``min_seq`` remaining interactions.
    4. Sort each user's interactions by time (stable: ties keep the raw order).
    """
    users, items, _ = log.arrays()
    if len(users) == 0:
        return []
    ucount = np.bincount(users)
    icount = np.bincount(items)
    keep = (ucount[users] >= min_user) & (icount[items] >= min_item)
    remaining = np.bincount(users[keep], minlength=len(ucount))
    keep &= remaining[users] >= min_seq
    return chronological(log, keep)


# ----------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------
@dataclass
class Converted:
    """What a reader produces: the two tables to write."""

    inter: AtomicTable
    item: AtomicTable
    source: str  # human-readable description of the source form


def _inter_from_sequences(sequences: Iterable[Tuple[str, Sequence[str]]]) -> AtomicTable:
    """Sequences without timestamps: position in the user's sequence as the timestamp."""
    rows = []
    for user, seq in sequences:
        rows.extend((user, item, str(pos)) for pos, item in enumerate(seq))
    return AtomicTable([("user_id", "token"), ("item_id", "token"), ("timestamp", "float")], rows)


def _inter_from_rows(rows: List[Tuple[str, str, float]]) -> AtomicTable:
    return AtomicTable([("user_id", "token"), ("item_id", "token"), ("timestamp", "float")],
                       [(u, i, float(t)) for u, i, t in rows])


def _items_in_order(inter: AtomicTable) -> List[str]:
    """Item ids in order of first occurrence in the ``.inter`` rows."""
    return list(dict.fromkeys(row[1] for row in inter.rows))


def _id_only_items(inter: AtomicTable) -> AtomicTable:
    """An ``.item`` table with only ``item_id`` (integer ids in numeric order)."""
    ids = _items_in_order(inter)
    if all(i.isdigit() for i in ids):
        ids.sort(key=int)
    return AtomicTable([("item_id", "token")], [(i,) for i in ids])


def _item_table(inter: AtomicTable, fields: List[Tuple[str, str]],
                meta: Dict[str, tuple]) -> AtomicTable:
    """One row per item of ``inter``; items without metadata get empty fields.  ``meta``
    maps item id -> values for ``fields[1:]``.  Rows follow the order of ``meta`` (the
    source file's order), then the items without metadata in first-occurrence order."""
    empty = ("",) * (len(fields) - 1)
    used = set(_items_in_order(inter))
    order = [i for i in meta if i in used]
    order += [i for i in _items_in_order(inter) if i not in meta]
    return AtomicTable(fields, [(i,) + tuple(meta.get(i, empty)) for i in order])


# ----------------------------------------------------------------------------------------
# ml-100k (from the recbole wheel)
# ----------------------------------------------------------------------------------------
def _ml100k_source() -> Path:
    import recbole

    return Path(recbole.__file__).resolve().parent / "dataset_example" / "ml-100k"


def read_ml100k(src: Path, progress: bool = False) -> Converted:
    """RecBole's ml-100k copy: all interactions (with rating), titles, years and genres."""
    src = Path(src)
    inter_in = read_atomic(src / "ml-100k.inter", required=("user_id", "item_id", "timestamp"),
                           progress=progress)
    item_in = read_atomic(src / "ml-100k.item", required=("item_id",), progress=progress)

    names = inter_in.names
    ucol, icol, tcol = (names.index(n) for n in ("user_id", "item_id", "timestamp"))
    rcol = names.index("rating") if "rating" in names else None
    records = []
    for n, row in enumerate(inter_in.rows):
        try:
            t = float(row[tcol])
            r = float(row[rcol]) if rcol is not None else None
        except ValueError:
            raise DatasetFormatError(src / "ml-100k.inter", f"non-numeric timestamp/rating in "
                                     f"{row!r}", n + 2) from None
        records.append((row[ucol], row[icol], r, t, n))

    def user_key(u: str):
        return (0, int(u), u) if u.isdigit() else (1, 0, u)

    records.sort(key=lambda r: (user_key(r[0]), r[3], r[4]))
    fields = [("user_id", "token"), ("item_id", "token")]
    if rcol is not None:
        fields.append(("rating", "float"))
    fields.append(("timestamp", "float"))
    rows = [(u, i, r, t) if rcol is not None else (u, i, t) for u, i, r, t, _ in records]
    inter = AtomicTable(fields, rows)

    # movie_title is a plain string: written as ``token`` (one value), not split into words.
    retype = {"movie_title": "token"}
    item_fields = [(n, retype.get(n, t)) for n, t in item_in.fields]
    id_col = item_in.names.index("item_id")
    meta: Dict[str, tuple] = {}
    for row in item_in.rows:
        meta.setdefault(row[id_col], tuple(v for k, v in enumerate(row) if k != id_col))
    item_fields = [item_fields[id_col]] + [f for k, f in enumerate(item_fields) if k != id_col]
    return Converted(inter, _item_table(inter, item_fields, meta), f"recbole wheel copy {src}")


# ----------------------------------------------------------------------------------------
# Shared forms: user_sequence.txt + atomic .item, and the LLM-ESR inter.txt
# ----------------------------------------------------------------------------------------
def read_user_sequences(path: Path, progress: bool = False) -> List[Tuple[str, List[str]]]:
    """``user_sequence.txt``: one line per user, ``user item item ...`` in time order."""
    path = Path(path)
    seqs: List[Tuple[str, List[str]]] = []
    seen: Dict[str, int] = {}
    for lineno, line in _iter_lines(path, progress):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise DatasetFormatError(path, f"expected 'user item [item ...]', got {line!r}", lineno)
        if parts[0] in seen:
            raise DatasetFormatError(path, f"user {parts[0]!r} already had line {seen[parts[0]]}",
                                     lineno)
        seen[parts[0]] = lineno
        seqs.append((parts[0], parts[1:]))
    if not seqs:
        raise DatasetFormatError(path, "no interactions")
    return seqs


def read_llmesr_inter(path: Path, progress: bool = False) -> List[Tuple[str, List[str]]]:
    """LLM-ESR ``inter.txt``: ``user item`` per line, positive integer ids, each user's
    lines in time order.  Returns the sequences, users in order of first appearance."""
    path = Path(path)
    seqs: Dict[str, List[str]] = {}
    for lineno, line in _iter_lines(path, progress):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DatasetFormatError(path, f"expected 2 columns 'user item', got {len(parts)}: "
                                     f"{line!r}", lineno)
        if not (parts[0].isdigit() and parts[1].isdigit()):
            raise DatasetFormatError(path, f"ids must be positive integers, got {line!r}", lineno)
        seqs.setdefault(parts[0], []).append(parts[1])
    if not seqs:
        raise DatasetFormatError(path, "no interactions")
    return list(seqs.items())


def read_beauty_shared(src: Path, progress: bool = False) -> Converted:
    """The shared S3Rec/P5 Beauty split: ``user_sequence.txt`` + ``Amazon_Beauty.item``."""
    src = Path(src)
    seqs = read_user_sequences(src / "user_sequence.txt", progress)
    items_in = read_atomic(src / "Amazon_Beauty.item", required=("item_id",), progress=progress)
    inter = _inter_from_sequences(seqs)
    id_col = items_in.names.index("item_id")
    if items_in.fields[id_col][1] != "token":
        raise DatasetFormatError(src / "Amazon_Beauty.item", "item_id must be of type token", 1)
    meta: Dict[str, tuple] = {}
    for row in items_in.rows:
        meta.setdefault(row[id_col], tuple(v for k, v in enumerate(row) if k != id_col))
    fields = [items_in.fields[id_col]] + [f for k, f in enumerate(items_in.fields) if k != id_col]
    return Converted(inter, _item_table(inter, fields, meta), f"shared S3Rec/P5 split in {src}")


def read_llmesr_shared(src: Path, progress: bool = False) -> Converted:
    """The shared LLM-ESR split (``inter.txt``); the items have no text."""
    seqs = read_llmesr_inter(Path(src) / "inter.txt", progress)
    inter = _inter_from_sequences(seqs)
    return Converted(inter, _id_only_items(inter), f"shared LLM-ESR split in {src}")


# ----------------------------------------------------------------------------------------
# Raw official formats
# ----------------------------------------------------------------------------------------
def _as_float(value) -> Optional[float]:
    """A number from a JSON value or a price string like ``"$12.99"`` (first number of a
    range such as ``"$5.99 - $9.99"``); ``None`` when there is none."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    m = re.match(r"^\s*\$?\s*([0-9][0-9,]*(?:\.[0-9]+)?)", str(value))
    if not m:
        return None
    try:
        return float(m.group(1).replace(",", ""))
    except ValueError:
        return None


def _text(value) -> str:
    """A text field: strings as they are, lists of strings joined by a space."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(_text(v) for v in value if v is not None).strip()
    return str(value).strip()


def _flat_categories(value) -> List[str]:
    """Category names from a list, or a list of category paths, deduplicated in order."""
    out: List[str] = []
    stack = value if isinstance(value, (list, tuple)) else [value]
    for v in stack:
        if isinstance(v, (list, tuple)):
            out.extend(_flat_categories(v))
        elif v is not None and str(v).strip():
            out.append(str(v).strip())
    return list(dict.fromkeys(out))


_ASIN_RE = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


def _read_meta(path: Path, wanted: set, progress: bool, python_literal: bool,
               extract: Callable[[dict, Path, int], tuple], id_key: str) -> Dict[str, tuple]:
    """Metadata rows of the ``wanted`` items (first record per id wins).

    Lines of unwanted items are skipped after a cheap id match (so they are not fully
    validated); every other line must parse.
    """
    meta: Dict[str, tuple] = {}
    id_re = _ASIN_RE if id_key == "asin" else re.compile(
        r'"' + re.escape(id_key) + r'"\s*:\s*"([^"]+)"')
    for lineno, line in _iter_lines(path, progress):
        if not line.strip():
            continue
        m = id_re.search(line)
        if m and (m.group(1) not in wanted or m.group(1) in meta):
            continue
        obj = _parse_object(path, lineno, line, python_literal)
        key = _get(obj, id_key, path, lineno)
        if key in wanted and key not in meta:
            meta[key] = extract(obj, path, lineno)
    return meta


# --- Amazon 2014 (McAuley) Beauty ---------------------------------------------------------
AMAZON2014_ITEM_FIELDS = [
    ("item_id", "token"), ("title", "token"), ("sales_type", "token"), ("sales_rank", "float"),
    ("categories", "token_seq"), ("price", "float"), ("brand", "token"),
    ("description", "token"),
]


def _amazon2014_meta_row(obj: dict, path: Path, lineno: int) -> tuple:
    rank = obj.get("salesRank") or {}
    if not isinstance(rank, dict):
        raise DatasetFormatError(path, f"salesRank must be a dict, got {rank!r}", lineno)
    sales_type, sales_rank = next(iter(rank.items()), ("", None))
    return (_text(obj.get("title")), str(sales_type), _as_float(sales_rank),
            format_list_value(_flat_categories(obj.get("categories") or [])),
            _as_float(obj.get("price")), _text(obj.get("brand")), _text(obj.get("description")))


def _amazon_review_log(reviews: Path, progress: bool) -> InteractionLog:
    """(reviewerID, asin, unixReviewTime) of an Amazon review file (2014 and 2018 share the keys)."""
    log = InteractionLog()
    for lineno, obj in _json_objects(reviews, progress):
        log.add(_get(obj, "reviewerID", reviews, lineno), _get(obj, "asin", reviews, lineno),
                _get(obj, "unixReviewTime", reviews, lineno, kind=float))
    if not len(log):
        raise DatasetFormatError(reviews, "no reviews")
    return log


def read_amazon2014(reviews: Path, meta: Path, progress: bool = False) -> Converted:
    """McAuley 2014 review 5-core + metadata: kept whole, each user's reviews sorted by
    ``unixReviewTime`` (stable), the real timestamps written."""
    _require_file(Path(meta))
    log = _amazon_review_log(Path(reviews), progress)
    inter = _inter_from_rows(chronological(log))
    rows = _read_meta(Path(meta), set(log.item_index), progress, True,
                      _amazon2014_meta_row, "asin")
    return Converted(inter, _item_table(inter, AMAZON2014_ITEM_FIELDS, rows),
                     f"McAuley 2014 raw files {reviews.name} + {meta.name}")


# --- Amazon 2018 Fashion -------------------------------------------------------------------
AMAZON2018_ITEM_FIELDS = [
    ("item_id", "token"), ("title", "token"), ("brand", "token"), ("category", "token_seq"),
    ("price", "float"), ("description", "token"), ("main_cat", "token"), ("feature", "token"),
    ("rank", "token"),
]


def _amazon2018_meta_row(obj: dict, path: Path, lineno: int) -> tuple:
    rank = obj.get("rank")
    return (_text(obj.get("title")), _text(obj.get("brand")),
            format_list_value(_flat_categories(obj.get("category") or [])),
            _as_float(obj.get("price")), _text(obj.get("description")),
            _text(obj.get("main_cat")), _text(obj.get("feature")), _text(rank))


def read_amazon2018(reviews: Path, meta: Path, progress: bool = False) -> Converted:
    """Amazon 2018 reviews + metadata with the LLM-ESR preprocessing (:func:`llmesr_filter`)."""
    _require_file(Path(meta))
    log = _amazon_review_log(Path(reviews), progress)
    inter = _inter_from_rows(llmesr_filter(log))
    wanted = {row[1] for row in inter.rows}
    rows = _read_meta(Path(meta), wanted, progress, False, _amazon2018_meta_row, "asin")
    return Converted(inter, _item_table(inter, AMAZON2018_ITEM_FIELDS, rows),
                     f"Amazon 2018 raw files {reviews.name} + {meta.name}")


# --- Yelp -----------------------------------------------------------------------------------
YELP_ITEM_FIELDS = [
    ("item_id", "token"), ("name", "token"), ("address", "token"), ("city", "token"),
    ("state", "token"), ("postal_code", "token"), ("latitude", "float"), ("longitude", "float"),
    ("stars", "float"), ("review_count", "float"), ("is_open", "token"),
    ("categories", "token_seq"), ("attributes", "token"), ("hours", "token"),
]


def _json_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _yelp_business_row(obj: dict, path: Path, lineno: int) -> tuple:
    cats = obj.get("categories")
    if isinstance(cats, list):
        cats = ", ".join(str(c) for c in cats)
    return (_text(obj.get("name")), _text(obj.get("address")), _text(obj.get("city")),
            _text(obj.get("state")), _text(obj.get("postal_code")),
            _as_float(obj.get("latitude")), _as_float(obj.get("longitude")),
            _as_float(obj.get("stars")), _as_float(obj.get("review_count")),
            _text(obj.get("is_open")), _text(cats), _json_text(obj.get("attributes")),
            _json_text(obj.get("hours")))


def _yelp_time(value: str, path: Path, lineno: int) -> float:
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise DatasetFormatError(path, f"bad date {value!r} (expected 'YYYY-MM-DD HH:MM:SS')",
                                 lineno) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def read_yelp(reviews: Path, business: Path, progress: bool = False) -> Converted:
    """Yelp reviews + businesses with the LLM-ESR preprocessing: reviews dated within
    [:data:`YELP_DATE_MIN`, :data:`YELP_DATE_MAX`] (as LLM-ESR does), then
    :func:`llmesr_filter`; the review ``date`` (read as UTC) becomes a Unix timestamp."""
    _require_file(Path(business))
    log = InteractionLog()
    for lineno, obj in _json_objects(Path(reviews), progress):
        user = _get(obj, "user_id", reviews, lineno)
        item = _get(obj, "business_id", reviews, lineno)
        date = _get(obj, "date", reviews, lineno)
        time = _yelp_time(date, reviews, lineno)
        if YELP_DATE_MIN <= date <= YELP_DATE_MAX:
            log.add(user, item, time)
    if not len(log):
        raise DatasetFormatError(reviews, "no reviews")
    inter = _inter_from_rows(llmesr_filter(log))
    wanted = {row[1] for row in inter.rows}
    rows = _read_meta(Path(business), wanted, progress, False, _yelp_business_row,
                      "business_id")
    return Converted(inter, _item_table(inter, YELP_ITEM_FIELDS, rows),
                     f"Yelp raw files {reviews.name} + {business.name}")


# ----------------------------------------------------------------------------------------
# Source forms and detection
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceForm:
    """One accepted layout of a source directory: its files (each a tuple of accepted
    names, the first being the official one) and the reader taking those paths."""

    label: str
    files: Tuple[Tuple[str, ...], ...]
    reader: Callable[..., Converted]

    def present(self, src: Path) -> List[Optional[Path]]:
        found = []
        for names in self.files:
            found.append(next((src / n for n in names if (src / n).is_file()), None))
        return found


def _gz_or_plain(name: str) -> Tuple[str, ...]:
    """Accept both ``x.json.gz`` and ``x.json`` (the first is the given one)."""
    if name.endswith(".gz"):
        return (name, name[:-3])
    return (name, name + ".gz")


@dataclass(frozen=True)
class DatasetSpec:
    """A known data set: its forms (raw forms first) and its default source directory."""

    name: str
    description: str
    forms: Tuple[SourceForm, ...]
    default_source: Callable[[], Path]


def _beauty_forms() -> Tuple[SourceForm, ...]:
    return (
        SourceForm("McAuley 2014 raw", (_gz_or_plain("reviews_Beauty_5.json.gz"),
                                        _gz_or_plain("meta_Beauty.json.gz")),
                   lambda src, p, progress: read_amazon2014(p[0], p[1], progress)),
        SourceForm("shared S3Rec/P5 split", (("user_sequence.txt",), ("Amazon_Beauty.item",)),
                   lambda src, p, progress: read_beauty_shared(src, progress)),
    )


def _llmesr_shared_form() -> SourceForm:
    return SourceForm("shared LLM-ESR split", (("inter.txt",),),
                      lambda src, p, progress: read_llmesr_shared(src, progress))


KNOWN_DATASETS: Dict[str, DatasetSpec] = {
    "ml-100k": DatasetSpec(
        "ml-100k", "MovieLens 100K from the recbole wheel (titles, years, genres)",
        (SourceForm("recbole atomic copy", (("ml-100k.inter",), ("ml-100k.item",)),
                    lambda src, p, progress: read_ml100k(src, progress)),),
        _ml100k_source),
    "Amazon_Beauty": DatasetSpec(
        "Amazon_Beauty", "Amazon Beauty 5-core (McAuley 2014), S3Rec/P5 split",
        _beauty_forms(), lambda: SHARED_DATA_DIR / "amazon_beauty_5core"),
    "Amazon_Fashion": DatasetSpec(
        "Amazon_Fashion", "Amazon Fashion (2018) as preprocessed by LLM-ESR",
        (SourceForm("Amazon 2018 raw", (_gz_or_plain("AMAZON_FASHION.json.gz"),
                                        _gz_or_plain("meta_AMAZON_FASHION.json.gz")),
                    lambda src, p, progress: read_amazon2018(p[0], p[1], progress)),
         _llmesr_shared_form()),
        lambda: SHARED_DATA_DIR / "amazon_fashion_llmesr"),
    "Yelp": DatasetSpec(
        "Yelp", "Yelp as preprocessed by LLM-ESR",
        (SourceForm("Yelp raw", (_gz_or_plain("yelp_academic_dataset_review.json"),
                                 _gz_or_plain("yelp_academic_dataset_business.json")),
                    lambda src, p, progress: read_yelp(p[0], p[1], progress)),
         _llmesr_shared_form()),
        lambda: SHARED_DATA_DIR / "yelp_llmesr"),
}


def _spec(name: str) -> DatasetSpec:
    if name not in KNOWN_DATASETS:
        raise KeyError(f"unknown data set {name!r}; known: {', '.join(KNOWN_DATASETS)}")
    return KNOWN_DATASETS[name]


def default_raw_dir(name: str) -> Path:
    """The source directory used when no ``raw_dir`` is given."""
    return _spec(name).default_source()


def default_out_dir() -> Path:
    """The project's ``dataset/`` folder."""
    return PROJECT_ROOT / "dataset"


def detect_form(name: str, src: Path) -> Tuple[SourceForm, List[Path]]:
    """The source form ``src`` holds, judged by the file names present.

    A form counts as present as soon as one of its files is; then all its files must be
    there (a missing one is an error naming it).  Raw forms are checked first.
    """
    spec = _spec(name)
    src = Path(src)
    if not src.is_dir():
        raise DatasetFormatError(src, f"source directory of {name} does not exist")
    for form in spec.forms:
        found = form.present(src)
        if any(found):
            missing = [names[0] for names, p in zip(form.files, found) if p is None]
            if missing:
                raise DatasetFormatError(src / missing[0], f"no such file (needed by the "
                                         f"{form.label} form of {name})")
            return form, found  # type: ignore[return-value]
    expected = "; or ".join(" + ".join(n[0] for n in f.files) for f in spec.forms)
    raise DatasetFormatError(src, f"holds no known source files of {name} (expected {expected})")


# ----------------------------------------------------------------------------------------
# Checking and writing
# ----------------------------------------------------------------------------------------
def _check(name: str, conv: Converted) -> Dict[str, int]:
    """Consistency checks of a conversion; returns the counts."""
    users = {r[0] for r in conv.inter.rows}
    items = set(_items_in_order(conv.inter))
    item_ids = [r[0] for r in conv.item.rows]
    if len(item_ids) != len(set(item_ids)) or set(item_ids) != items:
        raise AssertionError(f"{name}: .item rows do not match the items of .inter")
    if not conv.inter.rows:
        raise DatasetFormatError(None, f"{name}: no interactions left after preprocessing")
    return {"users": len(users), "items": len(items), "interactions": len(conv.inter.rows)}


def target_paths(name: str, out_dir: Optional[Path] = None) -> Dict[str, Path]:
    """``{"inter": .../NAME/NAME.inter, "item": .../NAME/NAME.item}``."""
    base = Path(out_dir) if out_dir is not None else default_out_dir()
    return {kind: base / name / f"{name}.{kind}" for kind in ("inter", "item")}


def _write_outputs(name: str, conv: Converted, out_dir: Path, force: bool) -> Dict[str, Path]:
    """Write both files into a temporary directory in ``out_dir``, then rename them into
    ``out_dir/NAME/``.  Other files in ``out_dir/NAME/`` (archetypes, caches) are kept."""
    targets = target_paths(name, out_dir)
    existing = [p for p in targets.values() if p.exists()]
    if existing and not force:
        raise DatasetExistsError(f"{existing[0].parent} already holds "
                                 f"{' and '.join(p.name for p in existing)}; pass force=True "
                                 f"(--force) to overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_dir))
    final_dir = targets["inter"].parent
    created_dir = False
    try:
        write_atomic(tmp / targets["inter"].name, conv.inter)
        write_atomic(tmp / targets["item"].name, conv.item)
        if not final_dir.is_dir():
            final_dir.mkdir()
            created_dir = True
        for kind in ("inter", "item"):
            os.replace(tmp / targets[kind].name, targets[kind])
    except BaseException:
        if created_dir and not any(final_dir.iterdir()):
            final_dir.rmdir()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return targets


def convert(name: str, raw_dir: Optional[Path] = None, out_dir: Optional[Path] = None,
            force: bool = False, progress: bool = True) -> dict:
    """Convert data set ``name`` into ``out_dir/NAME/NAME.{inter,item}``.

    ``raw_dir`` defaults to the shared copy (``../shared/data/...``; the recbole wheel for
    ml-100k), ``out_dir`` to the project's ``dataset/``.  Raises
    :class:`DatasetExistsError` when the files exist and ``force`` is false,
    :class:`DatasetFormatError` on missing or malformed input, ``KeyError`` on an unknown
    name.  Returns ``{"name", "source", "counts": {users, items, interactions},
    "paths": {inter, item}}``.
    """
    spec = _spec(name)
    src = Path(raw_dir) if raw_dir is not None else spec.default_source()
    out = Path(out_dir) if out_dir is not None else default_out_dir()
    if not force:
        existing = [p for p in target_paths(name, out).values() if p.exists()]
        if existing:  # fail before the (possibly long) reading
            raise DatasetExistsError(f"{existing[0].parent} already holds "
                                     f"{' and '.join(p.name for p in existing)}; pass "
                                     f"force=True (--force) to overwrite")
    form, paths = detect_form(name, src)
    conv = form.reader(src, paths, progress)
    counts = _check(name, conv)
    written = _write_outputs(name, conv, out, force)
    return {"name": name, "source": conv.source, "counts": counts, "paths": written}
