"""Where the plugin keeps its files: the project root, ``properties/`` and ``dataset/``."""
from __future__ import annotations

from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROPERTIES_DIR = PROJECT_ROOT / "properties"
DATASET_DIR = PROJECT_ROOT / "dataset"
SHARED_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"


def read_yaml(path: Path) -> dict:
    """A YAML mapping (empty when the file is empty); a missing file is an error."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
    return data


def dataset_properties(name: str) -> dict:
    """``properties/dataset/<name>.yaml`` (empty if the data set has none)."""
    path = PROPERTIES_DIR / "dataset" / f"{name}.yaml"
    return read_yaml(path) if path.is_file() else {}
