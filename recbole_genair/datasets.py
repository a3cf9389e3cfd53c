"""Command line: convert a known data set into RecBole atomic files.

    python -m recbole_genair.datasets NAME [--raw-dir DIR] [--out-dir DIR] [--force]

writes ``<out-dir>/NAME/NAME.inter`` and ``<out-dir>/NAME/NAME.item`` (default out-dir: the
project's ``dataset/``).  When both files already exist and ``--force`` is not given,
nothing is read or written: the command says so and exits with status 0.  Errors (unknown
name, missing or malformed source file) are printed as one line and exit with status 2.
The conversion itself lives in :mod:`recbole_genair.data.converters`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from recbole_genair.data.converters import (KNOWN_DATASETS, DatasetExistsError,
                                            DatasetFormatError, convert, default_out_dir,
                                            default_raw_dir)


def _parser() -> argparse.ArgumentParser:
    known = "\n".join(f"  {name:15s} {spec.description}" for name, spec in KNOWN_DATASETS.items())
    parser = argparse.ArgumentParser(
        prog="python -m recbole_genair.datasets",
        description="Convert a data set into RecBole atomic files NAME.inter and NAME.item.",
        epilog=f"known data sets:\n{known}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", metavar="NAME", help="data set name (see below)")
    parser.add_argument("--raw-dir", type=Path, default=None,
                        help="source directory (shared copy or official raw files; the form is "
                             "detected from the file names). Default: ../shared/data/<folder>, "
                             "or the recbole wheel for ml-100k")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"output root; files go to OUT/NAME/ (default: {default_out_dir()})")
    parser.add_argument("--force", action="store_true",
                        help="overwrite NAME.inter / NAME.item if they exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.name not in KNOWN_DATASETS:
        print(f"error: unknown data set {args.name!r}; known: {', '.join(KNOWN_DATASETS)}",
              file=sys.stderr)
        return 2
    src = args.raw_dir if args.raw_dir is not None else default_raw_dir(args.name)
    try:
        result = convert(args.name, raw_dir=src, out_dir=args.out_dir, force=args.force,
                         progress=not args.no_progress)
    except DatasetExistsError as exc:
        print(f"{args.name}: nothing done: {exc}")
        return 0
    except DatasetFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = result["counts"]
    print(f"{args.name}: {c['users']:,} users / {c['items']:,} items / "
          f"{c['interactions']:,} interactions (from {result['source']})")
    for kind in ("inter", "item"):
        print(f"  wrote {result['paths'][kind]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
