"""The paper's Table 2: every method x backbone over several seeds, resumable.

    python -m recbole_genair.experiments --dataset=Amazon_Beauty \\
        [--methods=base,genair,...] [--models=SASRec,GRU4Rec,BERT4Rec] [--seeds=3] \\
        [--config_files="a.yaml b.yaml"] [--out=DIR] [--metrics=hit@10,ndcg@10] [--report] [--key=value ...]

Each cell (backbone, method, seed) is one ``quick_start.run``: early stopping on valid
NDCG@10, then the test metrics of the best-valid epoch.  Seeds are ``seed + k`` for
``k = 0..seeds-1`` (``seed`` from the YAML layers or ``--seed=``); the fixed evaluation
negatives depend only on ``eval_negatives_seed``, so every cell ranks against the same
candidates.  Any other ``--key=value`` is a RecBole setting for every cell, e.g.
``--eval_negatives=0`` for full ranking or ``--epochs=50``.

Resuming: each finished cell is appended (flushed and fsync'ed) as one JSON line to
``DIR/results.jsonl`` keyed by (dataset, model, method, seed, config hash); the hash covers
the contents of ``--config_files`` and the ``--key=value`` settings (not the seed and not
settings that cannot change results: logging, progress bars, threads, checkpoint folder).
Each record also keeps the cell's *resolved* settings — every key of the final
configuration, package YAML defaults included, and the SHA-1 of the data files it read
(``.inter``, and the archetype feature file for methods that use one).  Re-running the
same command skips finished cells whose resolved settings are unchanged; a cell finished
under other settings (a package default changed on upgrade, features regenerated) is re-run,
and the keys that differ are printed.  A failed cell is reported and retried next time.  A
cell's training state is saved after every epoch (``DIR/saved/progress/``, the trainer's
``progress_file``), so a killed cell continues from its last epoch and ends with the result
of an uninterrupted run.  ``--report`` runs nothing: it writes the tables from the cells
finished so far (by this or other processes sharing ``DIR``) and lists the missing ones.

``--full_ranking`` also writes ``table2_full.md`` / ``table2_full.csv``: every finished cell's
saved best checkpoint (the epoch chosen on the run's own validation protocol) re-ranked
against every item on the test split (``significance.checkpoint_ranks``).  Each evaluation is
appended to ``DIR/full_ranking.jsonl`` and reused, so the report resumes as the runs do.

Outputs in ``DIR`` (default ``saved/experiments/<dataset>``, git-ignored):
``table2.md`` / ``table2.csv`` — rows = backbone x metric, columns = methods, cells
mean ± std (sample std) over seeds, best per row in bold, GenAIR's improvement over the best
baseline in % and the two-sided t-test p-value (``scipy.stats.ttest_ind``, Student's,
GenAIR's seeds vs the best baseline's seeds; the best baseline of a row is the one with the
highest test mean in that row, as in the paper's tables, so the HR@10 and NDCG@10 rows may name
different ones and the gain is never flattered) — and ``runs.csv`` (one row per run).
The paper's ablations (``genair_wo_prefill``, ``genair_wo_decoding``,
``genair_wo_calibration``; Table 3) run as methods when named in ``--methods``: they are
columns with a p-value of GenAIR against each, never the "best baseline".
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from recbole_genair.config import command_line_overrides
from recbole_genair.distributed import LAUNCH_KEYS
from recbole_genair.quick_start import build_config, run
from recbole_genair.run_settings import NON_RESULT_KEYS, resolved_settings, settings_changes
from recbole_genair.registry import ABLATIONS, BACKBONES, UsageError, methods as registered_methods
from recbole_genair.registry import all_methods, model_class

GENAIR = "genair"
DEFAULT_METRICS = ("hit@10", "ndcg@10")
DEFAULT_OUT = Path("saved") / "experiments"
RESULTS_FILE = "results.jsonl"
FULL_RANKING_FILE = "full_ranking.jsonl"
# Options of this module's command line; every other --key=value is a RecBole setting.
# Training bookkeeping of quick_start.run kept in each record; runs.csv shows all but the curve.
TRAINING_COLUMNS = ("epochs_run", "best_epoch", "median_epoch_seconds")
TRAINING_KEYS = (*TRAINING_COLUMNS, "valid_curve")
RUNNER_OPTIONS = frozenset({"dataset", "methods", "models", "seeds", "config_files", "out", "metrics", "report",
                            "full_ranking"})


def _say(message: str) -> None:
    print(f"[experiments] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- resume store
def config_hash(config_file_list: Optional[Sequence[str]], overrides: dict) -> str:
    """12 hex digits over the config files' contents and the result-relevant overrides."""
    files = []
    for path in config_file_list or []:
        files.append(hashlib.sha1(Path(path).read_bytes()).hexdigest())
    settings = {k: v for k, v in overrides.items() if k not in NON_RESULT_KEYS}
    blob = json.dumps({"files": files, "settings": settings}, sort_keys=True, default=repr)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def cell_settings(dataset: str, model: str, method: str, config_file_list, overrides: dict) -> dict:
    """:func:`resolved_settings` of one (backbone, method) cell, as the runner would configure it."""
    return resolved_settings(build_config(model, dataset, method, config_file_list, dict(overrides)))


def progress_file(out: Path, model: str, method: str, seed: int, settings: dict) -> Path:
    """Where a cell's per-epoch training state lives: named by the cell and its resolved
    settings, so a partial run made under other settings is never resumed."""
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return out / "saved" / "progress" / f"{model}-{method}-seed{seed}-{digest}.pth"


def cell_key(record: dict) -> tuple:
    return (record["dataset"], record["model"], record["method"], int(record["seed"]), record["config_hash"])


class ResultStore:
    """Append-only JSON-lines file of finished cells."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict[tuple, dict]:
        records: dict[tuple, dict] = {}
        if not self.path.is_file():
            return records
        with open(self.path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash mid-write: that cell re-runs
                    _say(f"warning: {self.path}:{lineno} is not valid JSON; ignored")
                    continue
                records[cell_key(record)] = record
        return records

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True, default=repr) + "\n"
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb") as fh:   # a line cut by a crash must not swallow this one
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = "\n" + line
        with open(self.path, "a", encoding="utf-8") as fh:  # one write of one line, O_APPEND
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


# --------------------------------------------------------------------------- running
@dataclass
class Outcome:
    """Records of the requested cells (finished now or before), failures, written files."""

    records: list[dict]
    failures: list[dict] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)
    ran: int = 0
    files: dict[str, Path] = field(default_factory=dict)


def base_seed(dataset, model, method, config_file_list, overrides) -> int:
    if "seed" in overrides:
        return int(overrides["seed"])
    return int(build_config(model, dataset, method, config_file_list, dict(overrides))["seed"])


def run_experiments(dataset: str, models: Sequence[str] = BACKBONES, methods: Optional[Sequence[str]] = None,
                    seeds: int = 3, config_file_list: Optional[Sequence[str]] = None,
                    overrides: Optional[dict] = None, out=None,
                    metrics: Sequence[str] = DEFAULT_METRICS, report_only: bool = False,
                    full_ranking: bool = False) -> Outcome:
    """Run every missing (model, method, seed) cell, then write the tables.

    ``report_only``: run nothing; write the tables from the cells already finished and list the
    missing ones in the markdown (to look at a grid that is still running elsewhere).
    ``full_ranking``: also the tables of the saved checkpoints re-ranked against every item.
    """
    methods = list(methods or registered_methods())
    models = list(models)
    overrides = dict(overrides or {})
    for model in models:  # unknown names: one-line error before anything runs
        for method in methods:
            model_class(model, method)
    files = [os.path.abspath(f) for f in config_file_list or []] or None
    first = base_seed(dataset, models[0], methods[0], files, overrides)  # also checks the data set
    out = Path(out) if out else DEFAULT_OUT / dataset
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out / RESULTS_FILE)
    digest = config_hash(files, overrides)
    seed_list = [first + k for k in range(seeds)]
    settings = {k: v for k, v in overrides.items() if k != "seed"}
    settings.setdefault("checkpoint_dir", str((out / "saved").resolve()))

    done = store.load()
    cells = [(model, method, seed) for seed in seed_list for model in models for method in methods]
    resolved = {(model, method): cell_settings(dataset, model, method, files, overrides)
                for model in models for method in methods}
    stale, unverified = set(), 0
    for model, method, seed in cells:
        record = done.get((dataset, model, method, seed, digest))
        if record is None:
            continue
        if "settings" not in record:
            unverified += 1
            continue
        changes = settings_changes(record["settings"], resolved[(model, method)])
        if changes:
            stale.add((model, method, seed))
            del done[(dataset, model, method, seed, digest)]
            _say(f"{model} / {method} / seed {seed} finished under other settings ("
                 + "; ".join(changes[:4]) + (f"; +{len(changes) - 4} more" if len(changes) > 4 else "")
                 + ("): listed as not run" if report_only else "): running it again"))
    if unverified:
        _say(f"note: {unverified} finished cell(s) were recorded before resolved settings were kept; "
             "they count as done without a check of package defaults and data files")
    todo = [c for c in cells if (dataset, c[0], c[1], c[2], digest) not in done]
    _say(f"{dataset}: {len(cells)} cell(s) ({len(models)} backbone(s) x {len(methods)} method(s) x "
         f"{seeds} seed(s) {seed_list}), config hash {digest}; {len(cells) - len(todo)} done, "
         f"{len(todo)} to run; results in {store.path}")

    outcome = Outcome(records=[])
    if report_only:
        outcome.missing = [{"model": m, "method": meth, "seed": s,
                            **({"reason": "finished under other settings"} if (m, meth, s) in stale else {})}
                           for m, meth, s in todo]
        todo = []
    for index, (model, method, seed) in enumerate(todo, 1):
        _say(f"[{index}/{len(todo)}] {model} / {method} / seed {seed} ...")
        started = time.time()
        progress = progress_file(out, model, method, seed, resolved[(model, method)])
        if progress.is_file():
            _say(f"[{index}/{len(todo)}] resuming from {progress}")
        try:
            result = run(model=model, dataset=dataset, method=method, config_file_list=files,
                         config_dict={**settings, "seed": seed, "progress_file": str(progress)}, saved=True)
        except Exception as exc:  # one failed cell must not lose the others; it is reported
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            _say(f"[{index}/{len(todo)}] {model} / {method} / seed {seed} FAILED: {error}")
            outcome.failures.append({"model": model, "method": method, "seed": seed, "error": error})
            continue
        record = {"dataset": dataset, "model": model, "method": method, "seed": seed,
                  "config_hash": digest, "overrides": settings,
                  "config_files": files or [], "settings": resolved[(model, method)],
                  "test_result": {k: float(v) for k, v in result["test_result"].items()},
                  "best_valid_result": {k: float(v) for k, v in result["best_valid_result"].items()},
                  "best_valid_score": float(result["best_valid_score"]),
                  "protocol": result.get("protocol", ""), "saved_model_file": result.get("saved_model_file"),
                  "seconds": round(time.time() - started, 1),
                  **{k: result.get(k) for k in TRAINING_KEYS},
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        store.append(record)
        progress.unlink(missing_ok=True)   # the record holds the result now
        done[cell_key(record)] = record
        outcome.ran += 1
        _say(f"[{index}/{len(todo)}] done in {record['seconds']}s: " + ", ".join(
            f"test {m}={record['test_result'].get(m, float('nan')):.4f}" for m in metrics))
        _write_all(out, dataset, models, methods, seed_list, digest, done, metrics, outcome,
                   _shared_cells(store, dataset, digest, resolved, files, overrides))

    _write_all(out, dataset, models, methods, seed_list, digest, done, metrics, outcome,
               _shared_cells(store, dataset, digest, resolved, files, overrides))
    if full_ranking:
        _write_full_ranking(out, dataset, models, methods, seed_list, digest, metrics, outcome)
    _say(f"wrote {', '.join(str(f) for f in outcome.files.values())}"
         + (f"; {len(outcome.failures)} cell(s) failed" if outcome.failures else "")
         + (f"; {len(outcome.missing)} cell(s) not run yet (--report)" if outcome.missing else ""))
    return outcome


def _shared_cells(store: ResultStore, dataset, digest, resolved: dict, files, overrides) -> dict[tuple, dict]:
    """Every finished, current cell of ``dataset`` under config hash ``digest`` in ``store``.

    Several processes may share one ``--out`` (one per core, each with its own ``--methods``
    or ``--seed``); each writes the tables from what all of them have finished, so the last
    one to write does not drop the others' columns.  A cell finished under other resolved
    settings is left out, as for this process's own cells.
    """
    cells = {}
    for key, record in store.load().items():
        if key[0] != dataset or key[4] != digest:
            continue
        pair = (key[1], key[2])
        if pair not in resolved:
            try:
                resolved[pair] = cell_settings(dataset, key[1], key[2], files, overrides)
            except UsageError as exc:   # a method or backbone this version does not have
                _say(f"note: {store.path}: {key[1]} / {key[2]} left out of the tables ({exc})")
                resolved[pair] = None
        if resolved[pair] is None or ("settings" in record and settings_changes(record["settings"], resolved[pair])):
            continue
        cells[key] = record
    return cells


def _write_all(out, dataset, models, methods, seed_list, digest, done, metrics, outcome: Outcome,
               shared: Optional[dict] = None) -> None:
    """The tables: this run's grid plus the cells other processes finished in the same folder."""
    shared = {**(shared or {}), **done}
    outcome.records = [done[(dataset, m, meth, s, digest)] for s in seed_list for m in models for meth in methods
                       if (dataset, m, meth, s, digest) in done]
    found = [k for k in shared if k[0] == dataset and k[4] == digest]
    models = list(models) + [m for m in BACKBONES if m not in models and any(k[1] == m for k in found)]
    models += sorted({k[1] for k in found} - set(models))
    methods = list(methods) + sorted({k[2] for k in found} - set(methods),
                                     key=lambda m: (all_methods().index(m) if m in all_methods() else len(all_methods()), m))
    seed_list = sorted(set(seed_list) | {k[3] for k in found})
    records = [shared[(dataset, m, meth, s, digest)] for s in seed_list for m in models for meth in methods
               if (dataset, m, meth, s, digest) in shared]
    absent = [m for m in metrics if records and not any(m in r["test_result"] for r in records)]
    if absent:   # a table of dashes otherwise; RecBole computes only its own `metrics` and `topk`
        _say(f"warning: no finished cell has {', '.join(absent)} (RecBole computed "
             f"{', '.join(sorted(records[0]['test_result']))}); set RecBole's `metrics` / `topk` to add them")
    protocol = next((r.get("protocol") for r in records if r.get("protocol")), "")
    title = (f"# Table 2: {dataset} — {len(seed_list)} seed(s) {seed_list}, config hash {digest}"
             + (f", {protocol}" if protocol else ""))
    outcome.files = _write_table(out / "table2", records, models, methods, metrics, title, outcome.failures,
                                 outcome.missing)
    outcome.files["runs"] = out / "runs.csv"
    _atomic_write(outcome.files["runs"], _csv_text(*runs_csv(records)))


def _write_table(stem: Path, records, models, methods, metrics, title, failures, missing) -> dict[str, Path]:
    """``<stem>.md`` and ``<stem>.csv``: the Table 2 layout of ``records``."""
    rows = summarize(records, models, methods, metrics)
    files = {"markdown": stem.with_suffix(".md"), "csv": stem.with_suffix(".csv")}
    capped = [r for r in records if stopped_by_the_cap(r)]
    _atomic_write(files["markdown"], render_markdown(rows, methods, metrics, title, failures, missing, capped))
    _atomic_write(files["csv"], _csv_text(*table_csv(rows, methods)))
    return files


def full_ranking_records(records: Sequence[dict], store: ResultStore) -> tuple[list[dict], list[dict]]:
    """``records`` with ``test_result`` re-computed under full ranking, and the cells that failed.

    Each checkpoint is evaluated by :func:`full_ranking_metrics` once; results are cached in
    ``store`` by cell and checkpoint file.
    """
    cached = store.load()
    out, failures = [], []
    for record in records:
        key = cell_key(record)
        model_file = record.get("saved_model_file")
        hit = cached.get(key)
        if hit is None or hit.get("saved_model_file") != model_file:
            if not model_file or not Path(model_file).is_file():
                failures.append({**{k: record[k] for k in ("model", "method", "seed")},
                                 "error": f"saved checkpoint {model_file!r} not found"})
                continue
            _say(f"full ranking: {record['model']} / {record['method']} / seed {record['seed']} ({model_file}) ...")
            try:
                result = full_ranking_metrics(model_file)
            except Exception as exc:  # one broken checkpoint must not lose the others; it is reported
                error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                _say(f"full ranking: {record['model']} / {record['method']} / seed {record['seed']} FAILED: {error}")
                failures.append({**{k: record[k] for k in ("model", "method", "seed")}, "error": error})
                continue
            hit = {k: record[k] for k in ("dataset", "model", "method", "seed", "config_hash")}
            hit.update(saved_model_file=model_file, test_result=result,
                       protocol="full ranking (every item), checkpoints selected as trained",
                       finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
            store.append(hit)
        out.append({**record, "test_result": hit["test_result"], "protocol": hit["protocol"]})
    return out, failures


def full_ranking_metrics(model_file: str, metrics: Sequence[str] = ("hit@5", "hit@10", "hit@20", "ndcg@5",
                                                                     "ndcg@10", "ndcg@20")) -> dict:
    """Test metrics of one saved checkpoint ranked against every item (per-user means)."""
    import numpy as np

    from recbole_genair.significance import checkpoint_ranks, per_user_metric
    ranks = np.fromiter(checkpoint_ranks(model_file, "test", full_ranking=True).ranks.values(), dtype=np.int64)
    return {m: round(float(per_user_metric(ranks, m).mean()), 6) for m in metrics}


def _write_full_ranking(out, dataset, models, methods, seed_list, digest, metrics, outcome: Outcome) -> None:
    records, failures = full_ranking_records(outcome.records, ResultStore(out / FULL_RANKING_FILE))
    title = (f"# Table 2, full ranking: {dataset} — {len(seed_list)} seed(s) {seed_list}, config hash "
             f"{digest}, every item ranked (the checkpoints of table2.md, re-ranked)")
    files = _write_table(out / "table2_full", records, models, methods, metrics, title, failures, outcome.missing)
    outcome.files.update({f"full_{k}": v for k, v in files.items()})
    outcome.failures += failures


# --------------------------------------------------------------------------- tables
def _stats(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def ttest_pvalue(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Student's t-test p-value (``scipy.stats.ttest_ind``); NaN when undefined."""
    from scipy.stats import ttest_ind
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(ttest_ind(list(a), list(b)).pvalue)


def summarize(records: list[dict], models: Sequence[str], methods: Sequence[str],
              metrics: Sequence[str] = DEFAULT_METRICS) -> list[dict]:
    """One row per (backbone, metric): per-method values and stats, best, GenAIR vs best baseline."""
    rows = []
    for model in models:
        for metric in metrics:
            row = {"backbone": model, "metric": metric, "values": {}, "mean": {}, "std": {}}
            for method in methods:
                values = [r["test_result"][metric] for r in records
                          if r["model"] == model and r["method"] == method and metric in r["test_result"]]
                if values:
                    row["values"][method] = values
                    row["mean"][method], row["std"][method] = _stats(values)
            means = row["mean"]
            row["best"] = max(means, key=means.get) if means else None
            baselines = {m: v for m, v in means.items() if m != GENAIR and m not in ABLATIONS}
            row["best_baseline"] = max(baselines, key=baselines.get) if baselines else None
            row["improvement_pct"] = row["p_value"] = None
            if GENAIR in means and row["best_baseline"] is not None:
                reference = means[row["best_baseline"]]
                row["improvement_pct"] = ((means[GENAIR] - reference) / reference * 100
                                          if reference else float("nan"))
                row["p_value"] = ttest_pvalue(row["values"][GENAIR], row["values"][row["best_baseline"]])
            # Table 3: GenAIR against each ablation that ran (never a "baseline").
            row["ablation_p"] = {m: ttest_pvalue(row["values"][GENAIR], row["values"][m])
                                 for m in methods if m in ABLATIONS and m in means and GENAIR in means}
            rows.append(row)
    return rows


def metric_label(metric: str) -> str:
    name, _, k = metric.partition("@")
    name = {"hit": "HR", "ndcg": "NDCG", "mrr": "MRR", "recall": "Recall", "precision": "Precision"}.get(
        name.lower(), name.upper())
    return f"{name}@{k}" if k else name


def pvalue_text(p: Optional[float]) -> str:
    if p is None:
        return ""
    if math.isnan(p):
        return "n/a"
    if p == 0:  # below the smallest double: scipy returns 0
        return "< 1e-300"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def stopped_by_the_cap(record: dict) -> bool:
    """The run trained every epoch its ``epochs`` setting allowed and its best validation score
    came at the last evaluation: it was still improving when the cap stopped it, so its test
    figures may understate what the method reaches (compared with runs that early stopping ended)."""
    curve, cap = record.get("valid_curve"), (record.get("settings") or {}).get("epochs")
    if not curve or cap is None or record.get("epochs_run") != int(cap):
        return False
    return curve[-1] == max(curve)  # a tie counts as the later epoch, as RecBole keeps it


def render_markdown(rows: list[dict], methods: Sequence[str], metrics: Sequence[str], title: str,
                    failures: Sequence[dict] = (), missing: Sequence[dict] = (), capped: Sequence[dict] = ()) -> str:
    ablations = [m for m in methods if m in ABLATIONS] if GENAIR in methods else []
    show_gain = GENAIR in methods and any(m != GENAIR and m not in ABLATIONS for m in methods)
    head = (["Backbone", "Metric", *methods]
            + (["Improv. (GenAIR vs best baseline)", "p-value"] if show_gain else [])
            + [f"p (GenAIR vs {m})" for m in ablations])
    lines = [title, "",
             "Test metrics of the best-valid epoch, mean ± sample std over seeds (n=… when a cell "
             "has fewer runs than others); best per row in bold; p-value: two-sided t-test "
             "(scipy.stats.ttest_ind) of GenAIR vs the best baseline over seeds"
             + (" (the ablations are not baselines; GenAIR vs each has its own p column)" if ablations else "")
             + ".", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        counts = {m: len(v) for m, v in row["values"].items()}
        most = max(counts.values(), default=0)
        cells = []
        for method in methods:
            if method not in row["mean"]:
                cells.append("–")
                continue
            text = f"{row['mean'][method]:.4f}"
            if counts[method] > 1:  # no std from a single run
                text += f" ± {row['std'][method]:.4f}"
            if counts[method] < most:
                text += f" (n={counts[method]})"
            cells.append(f"**{text}**" if method == row["best"] else text)
        if show_gain:
            gain = row["improvement_pct"]
            cells.append("" if gain is None else f"{gain:+.2f}% vs {row['best_baseline']}")
            cells.append(pvalue_text(row["p_value"]))
        cells += [pvalue_text(row["ablation_p"].get(m)) for m in ablations]
        lines.append(f"| {row['backbone']} | {metric_label(row['metric'])} | " + " | ".join(cells) + " |")
    if capped:
        lines += ["", "Stopped by the epoch cap while still improving (best validation score at the last "
                  "epoch; these figures may understate the method: a run with more `--epochs` would tell):", ""]
        lines += [f"- {r['model']} / {r['method']} / seed {r['seed']}: valid {max(r['valid_curve']):.4f} "
                  f"at epoch {r['epochs_run']} of {r['epochs_run']}" for r in capped]
    if failures:
        lines += ["", "Failed runs (re-run the command to retry them):", ""]
        lines += [f"- {f['model']} / {f['method']} / seed {f['seed']}: {f['error']}" for f in failures]
    if missing:
        lines += ["", "Not run yet (shown as –; the command without --report runs them):", ""]
        lines += [f"- {m['model']} / {m['method']} / seed {m['seed']}" + (f" ({m['reason']})" if m.get("reason") else "")
                  for m in missing]
    return "\n".join(lines) + "\n"


def table_csv(rows: list[dict], methods: Sequence[str]) -> tuple[list[str], list[dict]]:
    columns = ["backbone", "metric"]
    for method in methods:
        columns += [f"{method}_mean", f"{method}_std", f"{method}_n"]
    columns += ["best", "best_baseline", "improvement_pct", "p_value"]
    columns += [f"p_value_vs_{m}" for m in methods if m in ABLATIONS]
    out = []
    for row in rows:
        flat = {"backbone": row["backbone"], "metric": row["metric"], "best": row["best"],
                "best_baseline": row["best_baseline"], "improvement_pct": row["improvement_pct"],
                "p_value": row["p_value"], **{f"p_value_vs_{m}": p for m, p in row["ablation_p"].items()}}
        for method in methods:
            if method in row["mean"]:
                flat.update({f"{method}_mean": row["mean"][method], f"{method}_std": row["std"][method],
                             f"{method}_n": len(row["values"][method])})
        out.append(flat)
    return columns, out


def runs_csv(records: list[dict]) -> tuple[list[str], list[dict]]:
    test_keys = sorted({k for r in records for k in r["test_result"]})
    valid_keys = sorted({k for r in records for k in r["best_valid_result"]})
    columns = (["dataset", "model", "method", "seed", "config_hash"] + [f"test_{k}" for k in test_keys]
               + [f"valid_{k}" for k in valid_keys] + ["seconds", *TRAINING_COLUMNS, "protocol", "saved_model_file",
                                                       "finished"])
    rows = []
    for r in records:
        row = {k: r.get(k) for k in ("dataset", "model", "method", "seed", "config_hash", "seconds",
                                     *TRAINING_COLUMNS, "protocol", "saved_model_file", "finished")}
        row.update({f"test_{k}": v for k, v in r["test_result"].items()})
        row.update({f"valid_{k}": v for k, v in r["best_valid_result"].items()})
        rows.append(row)
    return columns, rows


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    import io
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) for k in columns})
    return buffer.getvalue()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")   # processes sharing --out each have their own
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- CLI
def parse(argv=None) -> tuple[argparse.Namespace, dict]:
    # allow_abbrev=False: RecBole's --seed=N must not be taken for an abbreviation of --seeds.
    parser = argparse.ArgumentParser(prog="python -m recbole_genair.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--dataset", "-d", required=True, help="a data set prepared under dataset/")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated (default: all registered: {','.join(registered_methods())}; "
                             f"paper Table 3 ablations, not in the default: {','.join(ABLATIONS)})")
    parser.add_argument("--models", default=",".join(BACKBONES), help="comma-separated backbones")
    parser.add_argument("--seeds", type=int, default=3, help="runs per cell: seed, seed+1, ...")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files")
    parser.add_argument("--out", default=None, help=f"output folder (default: {DEFAULT_OUT}/<dataset>)")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="test metrics in the table")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: write the tables from the finished cells, listing the missing ones")
    parser.add_argument("--full_ranking", action="store_true",
                        help="also write table2_full.md: the saved checkpoints re-ranked against every item")
    args, rest = parser.parse_known_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    try:
        overrides = command_line_overrides(rest, exclude=RUNNER_OPTIONS)
    except ValueError as exc:
        parser.error(str(exc))
    singular = {"model": "--models=", "backbone": "--models=", "method": "--methods="}
    wrong = [key for key in singular if key in overrides]
    if wrong:  # run_recbole_genair.py's spelling: it would be ignored and the whole default grid run
        parser.error(", ".join(f"--{key}= is not an option here; use {singular[key]} (comma-separated)"
                               for key in wrong))
    launch = [key for key in LAUNCH_KEYS if key in overrides]
    if launch:  # every cell would fail on it (distributed.check_launch); say so once, before any runs
        parser.error(f"{', '.join('--' + k for k in launch)}: the runner trains each cell in one process; "
                     f"train one run on several with `python run_recbole_genair.py --nproc=N ...`")
    return args, overrides


def _split(text: Optional[str]) -> Optional[list[str]]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def main(argv=None) -> int:
    args, overrides = parse(argv)
    try:
        outcome = run_experiments(
            dataset=args.dataset, models=_split(args.models), methods=_split(args.methods), seeds=args.seeds,
            config_file_list=args.config_files.split() if args.config_files else None,
            overrides=overrides, out=args.out, metrics=_split(args.metrics), report_only=args.report,
            full_ranking=args.full_ranking)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if outcome.failures else 0


if __name__ == "__main__":
    sys.exit(main())
