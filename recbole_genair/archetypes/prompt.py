"""The archetype prompt (GenAIR paper, Table 1) and the reader of RecBole ``.item`` files.

The prompt is::

    You are a helpful recommendation expert. Based on the following attributes, identify
    the types of users this item would appeal to: The item name is <..>. The item brand
    is <..>. ... What potential users align best with this item?

Which ``.item`` field fills which phrase is declared per data set in
``properties/dataset/<NAME>.yaml`` under ``archetype_fields`` (an ordered mapping
``field: label``), so a new data set needs only YAML.  Absent values are left out and
long values are truncated to ``archetype_max_chars`` characters.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from recbole_genair.data.converters import DatasetFormatError, read_atomic
from recbole_genair.paths import dataset_properties

PROMPT_HEAD = (
    "You are a helpful recommendation expert. Based on the following attributes, "
    "identify the types of users this item would appeal to:"
)
PROMPT_TAIL = "What potential users align best with this item?"
PHRASE = "The item {label} is {value}."
ELLIPSIS = "…"  # marks a truncated value

_MISSING = {"", "nan", "none", "null", "[]", "{}"}


@dataclass(frozen=True)
class PromptSpec:
    """How to turn an item row into the paper's prompt."""

    fields: Dict[str, str]  # .item field -> label in "The item <label> is <value>."
    max_chars: int = 300
    head: str = PROMPT_HEAD
    tail: str = PROMPT_TAIL
    extra: Dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"fields": dict(self.fields), "max_chars": self.max_chars,
                "head": self.head, "tail": self.tail, "phrase": PHRASE, "truncation": ELLIPSIS}


def clean_value(raw: str, max_chars: int) -> Optional[str]:
    """Normalise one field value; ``None`` when the value is absent."""
    if raw is None:
        return None
    value = str(raw).strip()
    # token_seq values written from Python lists look like "'Beauty', 'Makeup'"
    value = re.sub(r"(^|,\s*)'([^']*)'", lambda m: (m.group(1) or "") + m.group(2), value)
    value = re.sub(r"\s+", " ", value).strip().strip(",").strip()
    if value.lower() in _MISSING:
        return None
    if re.fullmatch(r"-?\d+\.0+", value):  # float columns holding whole numbers
        value = value.split(".")[0]
    if max_chars and len(value) > max_chars:
        cut = value[:max_chars]
        space = cut.rfind(" ")
        value = (cut[:space] if space > max_chars // 2 else cut).rstrip(" ,.;") + ELLIPSIS
    return value


def build_prompt(row: Mapping[str, str], spec: PromptSpec) -> str:
    """The paper's prompt for one item; fields with absent values are left out."""
    phrases: List[str] = []
    for fname, label in spec.fields.items():
        value = clean_value(row.get(fname), spec.max_chars)
        if value is not None:
            phrases.append(PHRASE.format(label=label, value=value.rstrip(".")))
    return " ".join([spec.head] + phrases + [spec.tail])


class ItemFileError(ValueError):
    """A RecBole ``.item`` file that cannot be read; the message names file and line."""


def read_item_file(path: Path) -> tuple[list[str], list[dict]]:
    """Read a RecBole atomic ``.item`` file as raw strings, as RecBole's loader reads it
    (tab-separated, ``"``-quoting undone: the converters quote a value that starts with ``"``).

    Returns ``(field_names, rows)`` where each row maps the bare field name (without
    ``:type``) to its raw string.  ``item_id`` must be present.
    """
    path = Path(path)
    if not path.is_file():
        raise ItemFileError(f"{path}: no such item file (run `python -m recbole_genair.datasets "
                            f"{path.parent.name}` first)")
    try:
        table = read_atomic(path, required=("item_id",))
    except DatasetFormatError as exc:
        raise ItemFileError(str(exc)) from exc
    return table.names, [dict(zip(table.names, row)) for row in table.rows]


def check_fields(spec: PromptSpec, names: List[str], path: Path) -> None:
    """Fail early when the YAML names a field the ``.item`` file does not have."""
    unknown = [f for f in spec.fields if f not in names]
    if unknown and len(unknown) == len(spec.fields):
        raise ItemFileError(
            f"{path} has no item text: its fields are {names}, the prompt reads {list(spec.fields)} "
            f"(the paper's LLM-ESR splits of Amazon_Fashion and Yelp carry no text). A build from the "
            f"raw files with item metadata has it: `python -m recbole_genair.datasets {Path(path).stem} "
            f"--raw-dir=DIR --force`")
    if unknown:
        raise ItemFileError(
            f"{path}: archetype_fields names unknown field(s) {unknown}; the file has {names}")


class PromptSpecError(ValueError):
    """The data set's properties declare no prompt fields."""


def prompt_spec_for(dataset: str) -> PromptSpec:
    """The prompt of ``dataset`` as ``properties/dataset/<NAME>.yaml`` declares it."""
    props = dataset_properties(dataset)
    fields = props.get("archetype_fields")
    if not fields:
        raise PromptSpecError(
            f"properties/dataset/{dataset}.yaml declares no `archetype_fields` (an ordered mapping "
            f"`.item field: label`), so no archetype prompt can be built for {dataset}")
    return PromptSpec(fields={str(k): str(v) for k, v in fields.items()},
                      max_chars=int(props.get("archetype_max_chars", 300)))


def how_to_make_features(dataset: str, item_path: Path) -> str:
    """One sentence for a missing feature file: the command that makes ``dataset``'s archetype
    features, or why the archetype step cannot make them from its ``.item`` file as it is."""
    try:
        spec = prompt_spec_for(dataset)
        names, _ = read_item_file(item_path)
        check_fields(spec, names, Path(item_path))
    except (PromptSpecError, ItemFileError) as exc:
        return f"none can be made from this data set as it is: {exc}; `--method=base` runs without them"
    return f"make them with `python -m recbole_genair.archetypes --dataset={dataset}`"
