"""Ray Tune hyperparameter sweeps selected on **validation** metrics.

    python run_recbole_genair.py --tune --model=SASRec --dataset=ml-100k [--method=genair]
        [--search_space=FILE.yaml] [--num_samples=N] [--max_concurrent=N] [--ray_address=ADDR]
        [--out=DIR] [--key=value ...]

Replaces RecBole's ``objective_function`` (which reports *test* metrics and calls
``tune.report`` in a form Ray 2.6 rejects).  Each trial is this package's own run —
``build_config`` → ``prepare`` → ``GenAIRTrainer.fit`` — and reports the validation metrics
of every evaluated epoch (``valid_ndcg@10``, ``valid_hit@10``, ...) through
``ray.air.session.report``, so ASHA (time attribute ``training_iteration`` = evaluations)
stops poor trials early.  A trial's score is the best validation value over its epochs,
i.e. the epoch whose checkpoint RecBole keeps.  Test metrics are computed once, for the
best trial only, after the sweep (its checkpoint is reloaded; if that file is not visible
from the driver, the best configuration is re-run) — never for selection.

Search space (``properties/tune/<method>.yaml`` unless ``--search_space``)::

    calibration_alpha: {grid: [1.0e-4, 1.0e-3]}      # every value (Ray grid_search)
    dropout_prob: {choice: [0.2, 0.5]}               # one value drawn per sample
    learning_rate: {loguniform: [1.0e-4, 1.0e-2]}    # drawn log-uniformly in [lo, hi]
    projector_dropout: {uniform: [0.0, 0.3]}         # drawn uniformly in [lo, hi]
    fixed: {epochs: 50}                              # settings for every trial (optional)
    scheduler: {type: asha, grace_period: 5, reduction_factor: 4}   # or {type: fifo}

``num_samples`` is Ray's: the grid is run ``num_samples`` times, drawing the random keys
anew each time (default 1 when the space has a grid — every grid point once — else 10), so a
42-point grid with ``--num_samples=2`` is 84 trials.
Precedence inside a trial, lowest first: YAML layers < ``--config_files`` < ``fixed`` <
command-line ``--key=value`` < the trial's sampled values (a key cannot be both swept and
set on the command line).  ``torch_threads`` is set to the trial's CPU reservation.

Outputs (``ray_results/<dataset>-<model>-<method>-<timestamp>/``, Ray's experiment
directory): ``trials.csv`` (one row per trial, best first, failed trials with their error),
``history.csv`` (every report of every trial), ``summary.md`` (table, best trial's test
metrics, commands to reproduce) and ``best.json``.

On a Ray cluster (``--ray_address``) the package and the data set must be importable /
readable at the same absolute paths on every node, and ``--out`` must be on storage every
node mounts at the same path (e.g. NFS): Ray 2.6 no longer copies trial checkpoints to the
head node, so the sweep checks this on every node before it starts.  Relative paths given
here or inside ``--config_files`` are made absolute on the driver.

**An interrupted sweep continues** (``--out=DIR``): every trial trains with a progress file
(``progress_file``, see ``recbole_genair.trainer``) and hands it, with its best checkpoint,
to Ray as the trial's checkpoint after each validated epoch.  After Ctrl-C, a crash or a
lost node, the same command with ``--out=`` the sweep's directory restores it through
``Tuner.restore``: finished trials are kept as they were, unfinished ones continue after
their last reported epoch with the same numbers an uninterrupted trial would report, and
failed ones (a lost node, an out-of-memory kill) are retried from their last reported epoch —
a trial that fails for a reason of its own fails again and is reported again.  ASHA's rungs
are kept in ``scheduler_state.pkl`` after every report (Ray 2.6 restores the scheduler as it
was built, empty), so a resumed sweep stops the same trials an uninterrupted one would.  A
directory holding a sweep of other settings is refused (``sweep.json`` records them);
``--max_concurrent`` is the first run's (Ray keeps it with the sweep).
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from recbole_genair.cluster import LOCAL, init_ray, nodes_not_seeing
from recbole_genair.run_settings import resolved_settings, settings_changes
from recbole_genair.paths import PROPERTIES_DIR, read_yaml
from recbole_genair.quick_start import build_config
from recbole_genair.registry import UnknownChoiceError, UsageError, method_settings, model_class, model_method

SPEC_KINDS = ("grid", "choice", "loguniform", "uniform")
SCHEDULER_KEYS = {"type", "grace_period", "reduction_factor", "max_t", "brackets"}
# Options of run_recbole_genair.py itself; every other --key=value is a RecBole setting.
TUNE_OPTIONS = ("search_space", "num_samples", "max_concurrent", "ray_address", "out")  # --tune only
# Settings holding file paths: made absolute on the driver, since trials run elsewhere.
PATH_KEYS = ("data_path", "archetype_feature_file")
# Settings a trial always chooses itself; left out of the reproduce commands.
TRIAL_KEYS = ("checkpoint_dir", "torch_threads", "show_progress")
DEFAULT_RESULTS_DIR = "ray_results"
SWEEP_FILE = "sweep.json"        # a sweep directory's settings, checked before it is resumed
SCHEDULER_FILE = "scheduler_state.pkl"  # ASHA's rungs, rewritten after every report
TRIAL_PROGRESS = "progress.pth"  # inside a trial directory (and inside its Ray checkpoints)


def _say(message: str) -> None:
    print(f"[tune] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- search space
@dataclass
class SearchSpace:
    """A parsed search-space YAML: swept keys, fixed settings and scheduler options."""

    params: dict[str, tuple[str, list]] = field(default_factory=dict)  # key -> (kind, values)
    fixed: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    source: str = "<dict>"

    @property
    def grid_size(self) -> int:
        return math.prod(len(v) for kind, v in self.params.values() if kind == "grid")

    @property
    def has_grid(self) -> bool:
        return any(kind == "grid" for kind, _ in self.params.values())

    def default_num_samples(self) -> int:
        random_keys = any(kind != "grid" for kind, _ in self.params.values())
        return 10 if random_keys and not self.has_grid else 1

    def ray_space(self) -> dict:
        from ray import tune as ray_tune
        out = {}
        for key, (kind, values) in self.params.items():
            if kind == "grid":
                out[key] = ray_tune.grid_search(list(values))
            elif kind == "choice":
                out[key] = ray_tune.choice(list(values))
            elif kind == "loguniform":
                out[key] = ray_tune.loguniform(*values)
            else:
                out[key] = ray_tune.uniform(*values)
        return out


def parse_search_space(data: dict, source: str = "<dict>") -> SearchSpace:
    """Check and parse a search-space mapping (see the module docstring for the format)."""
    space = SearchSpace(source=source)
    for key, spec in data.items():
        if key in ("fixed", "scheduler"):
            if spec is None:
                continue
            if not isinstance(spec, dict):
                raise UsageError(f"{source}: `{key}` must be a mapping, got {spec!r}")
            if key == "scheduler":
                unknown = set(spec) - SCHEDULER_KEYS
                if unknown:
                    raise UsageError(f"{source}: unknown scheduler option(s) {sorted(unknown)}; "
                                     f"known: {sorted(SCHEDULER_KEYS)}")
                if spec.get("type", "asha") not in ("asha", "fifo"):
                    raise UsageError(f"{source}: scheduler type must be asha or fifo, got {spec['type']!r}")
            setattr(space, key, dict(spec))
            continue
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in SPEC_KINDS):
            raise UsageError(f"{source}: `{key}` must be one of " + ", ".join(
                f"{{{kind}: [...]}}" for kind in SPEC_KINDS) + f"; got {spec!r}")
        kind, values = next(iter(spec.items()))
        if not isinstance(values, list) or not values:
            raise UsageError(f"{source}: `{key}: {{{kind}: ...}}` needs a non-empty list, got {values!r}")
        if kind in ("loguniform", "uniform"):
            if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or values[0] >= values[1]:
                raise UsageError(f"{source}: `{key}: {{{kind}: [lo, hi]}}` needs two numbers lo < hi, got {values!r}")
            if kind == "loguniform" and values[0] <= 0:
                raise UsageError(f"{source}: `{key}: {{loguniform: ...}}` needs lo > 0, got {values!r}")
        space.params[key] = (kind, list(values))
    clash = set(space.params) & set(space.fixed)
    if clash:
        raise UsageError(f"{source}: {sorted(clash)} both swept and fixed")
    return space


def load_search_space(path) -> SearchSpace:
    path = Path(path)
    if not path.is_file():
        raise UnknownChoiceError(f"search space {path} does not exist")
    return parse_search_space(read_yaml(path), source=str(path))


def default_search_space(method: str) -> Path:
    path = PROPERTIES_DIR / "tune" / f"{method}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (PROPERTIES_DIR / "tune").glob("*.yaml"))) or "none"
        raise UnknownChoiceError(f"no search space for method {method!r} at {path} (have: {known}); "
                                 f"pass --search_space=FILE.yaml")
    return path


# --------------------------------------------------------------------------- the trial
def _absolute_paths(settings: dict) -> dict:
    out = dict(settings)
    for key in PATH_KEYS:
        if isinstance(out.get(key), str) and not os.path.isabs(out[key]):
            out[key] = os.path.abspath(out[key])
    return out


def _relative_paths_in(config_files) -> dict:
    """Path settings the ``--config_files`` give as relative paths (the last file's wins).

    RecBole reads them relative to the working directory; a trial runs in its own directory
    (on a cluster, on another machine), so they are handed to the trials made absolute here,
    one precedence level up (the sweep's ``fixed`` and the command line still win)."""
    found = {}
    for path in config_files or []:
        found.update({k: v for k, v in (read_yaml(path) or {}).items()
                      if k in PATH_KEYS and isinstance(v, str) and not os.path.isabs(v)})
    return _absolute_paths(found)


def trial_metrics(valid_result: dict, valid_score: float, epoch_idx: int, trainer) -> dict:
    """What a trial reports after each validation: only validation numbers."""
    metrics = {f"valid_{name}": float(value) for name, value in valid_result.items()}
    metrics.update(valid_score=float(valid_score), epoch=int(epoch_idx),
                   best_valid_score=float(trainer.best_valid_score),
                   saved_model_file=str(trainer.saved_model_file))
    return metrics


def genair_trial(params: dict, setup: dict) -> None:
    """Ray function trainable: one RecBole run reporting validation metrics each epoch."""
    from ray.air import Checkpoint, session
    from recbole.utils import init_seed

    from recbole_genair.compat import init_logger
    from recbole_genair.quick_start import prepare

    trial_dir = Path(session.get_trial_dir())
    progress = trial_dir / TRIAL_PROGRESS
    restore_trial_files(session.get_checkpoint(), trial_dir)
    config_dict = {**setup["base"], **params,
                   "checkpoint_dir": str(trial_dir / "saved"), "progress_file": str(progress),
                   "torch_threads": setup["cpus_per_trial"], "show_progress": False}
    # build_config reads no sys.argv: the Ray worker's own --node-ip-address=... stays out.
    config = build_config(setup["model"], setup["dataset"], setup["method"], setup["config_file_list"], config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)  # ./log/ inside the trial directory (Ray's working directory)
    _, (train_data, valid_data, _test_unused), _, trainer = prepare(config)

    # RecBole's callback receives only the score; keep the full result of each validation.
    last_valid = {}
    valid_epoch = trainer._valid_epoch

    def _valid_epoch_keeping_result(*args, **kwargs):
        score, result = valid_epoch(*args, **kwargs)
        last_valid["result"] = result
        return score, result

    trainer._valid_epoch = _valid_epoch_keeping_result

    def report(epoch_idx, valid_score):
        # the trainer has just saved this epoch's progress and, if it improved, the best model
        snapshot = snapshot_trial_files(trial_dir, progress, Path(trainer.saved_model_file))
        session.report(trial_metrics(last_valid["result"], valid_score, epoch_idx, trainer),
                       checkpoint=Checkpoint.from_directory(str(snapshot)))

    trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=report)


def snapshot_trial_files(trial_dir: Path, progress: Path, best_model: Path) -> Path:
    """``trial_dir/snapshot/`` = the progress file and the best checkpoint, at their paths
    relative to ``trial_dir`` (Ray copies the directory into the trial's checkpoint)."""
    snapshot = trial_dir / "snapshot"
    if snapshot.exists():
        shutil.rmtree(snapshot)
    snapshot.mkdir()
    for path in (progress, best_model):
        if path.is_file():
            target = snapshot / path.relative_to(trial_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return snapshot


def restore_trial_files(checkpoint, trial_dir: Path) -> None:
    """Put a restored trial's files back where its trainer reads them.

    With no Ray checkpoint the trial starts from scratch, so a progress file written after
    its last report (an epoch Ray never heard of) is dropped: Ray's iteration count and the
    trainer's epoch must stay the same."""
    progress = trial_dir / TRIAL_PROGRESS
    if checkpoint is None:
        progress.unlink(missing_ok=True)
        return
    restored = Path(checkpoint.to_directory())
    for path in restored.rglob("*.pth"):
        target = trial_dir / path.relative_to(restored)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    if not progress.is_file():
        raise FileNotFoundError(f"Ray checkpoint {restored} of trial {trial_dir.name} holds no {TRIAL_PROGRESS}")


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


# --------------------------------------------------------------------------- results
@dataclass
class SweepReport:
    """What ``tune`` returns: the trials (best first, failed last) and the best one's test."""

    out_dir: Path
    metric: str
    mode: str
    trials: list[dict]
    history: list[dict]
    best: Optional[dict]
    commands: dict[str, str]
    resume_command: Optional[str] = None  # set when the sweep was interrupted

    @property
    def failed(self) -> list[dict]:
        return [t for t in self.trials if t["status"] == "failed"]

    @property
    def unfinished(self) -> list[dict]:
        return [t for t in self.trials if t["status"] == "unfinished"]


def _error_summary(error: BaseException) -> str:
    cause = getattr(error, "cause", None) or error
    text = f"{type(cause).__name__}: {cause}".strip()
    first = text.splitlines()[0] if text else type(cause).__name__
    return first[:300]


def _read_params(log_dir: Optional[Path], fallback: Optional[dict]) -> dict:
    if log_dir is not None and (Path(log_dir) / "params.json").is_file():
        with open(Path(log_dir) / "params.json", encoding="utf-8") as fh:
            return json.load(fh)
    return dict(fallback or {})


def unfinished_trial_ids(result_grid) -> set[str]:
    """Trials the sweep was interrupted in: no error and no final (``done``) result.

    A trial that returns or that the scheduler stops gets a last result with ``done=True``;
    an interrupted one does not (Ray marks it TERMINATED on shutdown all the same)."""
    return {trial.trial_id for trial in result_grid._experiment_analysis.trials  # Ray 2.6 (pinned)
            if trial.error_file is None and not (trial.last_result or {}).get("done")}


def collect_trials(result_grid, space: SearchSpace, metric: str, mode: str,
                   unfinished: frozenset = frozenset()) -> tuple[list[dict], list[dict]]:
    """One summary row per trial and every reported row, from a ``ResultGrid``; trials
    whose id is in ``unfinished`` are listed as such and take no rank."""
    sign = 1 if mode == "max" else -1
    trials, history = [], []
    for result in result_grid:
        log_dir = Path(result.log_dir) if result.log_dir else None
        trial_id = (log_dir.name.removeprefix("trial_") if log_dir else
                    (result.metrics or {}).get("trial_id", "?"))
        params = _read_params(log_dir, getattr(result, "config", None))
        row = {"trial_id": trial_id, "status": "ok",
               **{f"param/{k}": params.get(k) for k in space.params}}
        frame = result.metrics_dataframe
        rows = [] if frame is None else frame.to_dict("records")
        # A trial resumed from an older checkpoint than its last logged row (driver killed
        # between the two) reports those iterations again: keep each iteration's last row.
        rows = list({r.get("training_iteration", i): r for i, r in enumerate(rows)}.values())
        for report in rows:
            history.append({"trial_id": trial_id, **{k: v for k, v in report.items()
                                                     if k == "training_iteration" or k == "epoch"
                                                     or k.startswith("valid_")}})
        scored = [r for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
        epochs = [r["epoch"] for r in rows if isinstance(r.get("epoch"), (int, float)) and math.isfinite(r["epoch"])]
        row["epochs_trained"] = int(max(epochs)) + 1 if epochs else 0
        if scored:
            # the last of tied epochs: RecBole's early_stopping (>=) saved that one's weights
            best = max(reversed(scored), key=lambda r: sign * r[metric])
            row.update({metric: best[metric], "best_epoch": best.get("epoch"),
                        "best_iteration": best.get("training_iteration"), "iterations": len(rows)})
            row.update({k: v for k, v in best.items() if k.startswith("valid_") and k != metric})
            row["saved_model_file"] = best.get("saved_model_file")
        else:
            row.update({metric: None, "iterations": len(rows)})
        if trial_id in unfinished:
            row["status"] = "unfinished"
        elif result.error is not None:
            row["status"] = "failed"
            row["error"] = _error_summary(result.error)
            row["error_file"] = str(log_dir / "error.txt") if log_dir else ""
        elif not scored:
            row["status"] = "failed"
            row["error"] = "trial ended without reporting a validation metric"
        row["log_dir"] = str(log_dir) if log_dir else ""
        trials.append(row)
    ok = sorted((t for t in trials if t["status"] == "ok"), key=lambda t: -sign * t[metric])
    unfinished_rows = [t for t in trials if t["status"] == "unfinished"]
    failed = [t for t in trials if t["status"] == "failed"]
    for rank, trial in enumerate(ok, 1):
        trial["rank"] = rank
    return ok + unfinished_rows + failed, history


def best_trial_settings(best_trial: dict, base: dict, params: dict, default_epochs: int) -> dict:
    """The settings that train the best trial again: the sweep's fixed settings, the trial's
    values and, when ASHA stopped it, the epochs it trained (training longer could move its
    best epoch, and with it the reported numbers)."""
    settings = {**base, **params}
    configured = int(settings.get("epochs", default_epochs))
    if 0 < best_trial.get("epochs_trained", 0) < configured:
        settings["epochs"] = best_trial["epochs_trained"]
    return settings


def evaluate_checkpoint(model_file: str) -> dict:
    """Valid and test metrics of a saved model under the package's protocol."""
    from recbole_genair.quick_start import load_data_and_model
    from recbole_genair.trainer import GenAIRTrainer, fixed_negatives

    config, net, dataset, _, valid_data, test_data = load_data_and_model(model_file)
    trainer = GenAIRTrainer(config, net)
    if config["eval_negatives"]:
        trainer.set_negatives(fixed_negatives(dataset, int(config["eval_negatives"]),
                                              int(config["eval_negatives_seed"])))
    valid = trainer.evaluate(valid_data, load_best_model=False)
    test = trainer.evaluate(test_data, load_best_model=False)
    return {"valid_result": dict(valid), "test_result": dict(test), "source": f"checkpoint {model_file}"}


def _cli_value(value) -> str:
    if isinstance(value, (list, tuple, dict)):
        return repr(value)
    return str(value)


def reproduce_command(model, dataset, method, config_file_list, settings: dict) -> str:
    parts = ["python", "run_recbole_genair.py", f"--model={model}", f"--dataset={dataset}", f"--method={method}"]
    if config_file_list:
        parts.append(f"--config_files={' '.join(config_file_list)}")
    parts += [f"--{k}={_cli_value(v)}" for k, v in settings.items() if k not in TRIAL_KEYS]
    return " ".join(shlex.quote(p) for p in parts)


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.3g}"
    return str(value)


def _md_cell(value, raw: bool = False) -> str:
    text = "" if value is None else str(value) if raw else _fmt(value)
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(report: SweepReport, header: str) -> None:
    """``trials.csv``, ``history.csv``, ``best.json`` and ``summary.md`` in ``report.out_dir``."""
    out = report.out_dir
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(["rank", "trial_id", "status"]
                                 + [k for t in report.trials for k in t if k.startswith("param/")]
                                 + [report.metric, "best_epoch", "iterations"]
                                 + sorted({k for t in report.trials for k in t
                                           if k.startswith("valid_") and k != report.metric})
                                 + ["error", "error_file", "saved_model_file", "log_dir"]))
    _write_csv(out / "trials.csv", columns, report.trials)
    hist_cols = list(dict.fromkeys(["trial_id", "training_iteration", "epoch"]
                                   + sorted({k for h in report.history for k in h if k.startswith("valid_")})))
    _write_csv(out / "history.csv", hist_cols, report.history)
    with open(out / "best.json", "w", encoding="utf-8") as fh:
        json.dump({"metric": report.metric, "mode": report.mode, "best": report.best,
                   "commands": report.commands}, fh, indent=2, default=str)

    shown = [c for c in columns if c not in ("error_file", "saved_model_file", "log_dir")]
    lines = [header, "", f"Selection: {report.metric} ({report.mode}, best epoch of each trial) "
             "on the validation split; test metrics below are the best trial's only.", ""]
    lines.append("| " + " | ".join(c.removeprefix("param/") for c in shown) + " |")
    lines.append("|" + "---|" * len(shown))
    for trial in report.trials:
        lines.append("| " + " | ".join(_md_cell(trial.get(c), raw=c.startswith("param/")) for c in shown) + " |")
    lines.append("")
    if report.best:
        lines.append(f"## Best trial {report.best['trial_id']}")
        lines.append("")
        for split in ("valid_result", "test_result"):
            res = report.best.get(split) or {}
            if res:
                lines.append(f"- {split.split('_')[0]}: " + ", ".join(f"{k} {v:.4f}" for k, v in res.items()))
        if report.best.get("source"):
            lines.append(f"- evaluated from: {report.best['source']}")
        if report.best.get("final_error"):
            lines.append(f"- final evaluation failed: {report.best['final_error']}")
        lines += ["", "Reproduce the best trial (same fixed sweep settings):", "",
                  "    " + report.commands["trial"], "",
                  "Best swept values under the full protocol (without the sweep's `fixed` settings):", "",
                  "    " + report.commands["protocol"], ""]
    elif report.resume_command:
        lines += ["Interrupted before every trial ended; no best trial is chosen yet.  Continue the "
                  "sweep with:", "", "    " + report.resume_command, ""]
    else:
        lines += ["No trial finished with a validation metric.", ""]
    if report.failed:
        lines += ["## Failed trials", ""]
        for trial in report.failed:
            lines.append(f"- {trial['trial_id']}: {trial.get('error', '')} ({trial.get('error_file', '')})")
        lines.append("")
    (out / "summary.md").write_text("\n".join(lines), encoding="utf-8")


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in columns})


# --------------------------------------------------------------------------- driver
def __getattr__(name: str):
    """``PersistentASHA`` is defined on first use (importing Ray costs seconds, and plain runs
    import this module for its option names); pickle finds it here when a sweep is restored."""
    if name == "PersistentASHA":
        if name not in globals():  # one class, or pickle refuses the instances of the first
            globals()[name] = _persistent_asha_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _persistent_asha_class():
    from ray.tune.schedulers import ASHAScheduler

    class PersistentASHA(ASHAScheduler):
        """ASHA whose rungs survive an interrupted sweep.

        Ray 2.6 never saves a scheduler's state: ``Tuner.restore`` unpickles it as it was
        when the sweep was built, with empty rungs, so a resumed sweep would judge its trials
        against nothing and keep ones an uninterrupted sweep stops.  This one rewrites its
        state to ``state_file`` after every change and reads it back at its first use."""

        def __init__(self, state_file, **kwargs):
            super().__init__(**kwargs)
            self._state_file = str(state_file)
            self._state_read = False

        def _read_state(self) -> None:
            if not self._state_read:
                self._state_read = True
                if os.path.isfile(self._state_file):
                    self.restore(self._state_file)  # the saved state says it was read
                    _say(f"ASHA rungs restored from {self._state_file}")

        def _write_state(self) -> None:
            tmp = f"{self._state_file}.{os.getpid()}.tmp"
            self.save(tmp)
            os.replace(tmp, self._state_file)

        def on_trial_add(self, trial_runner, trial):
            self._read_state()
            if trial.trial_id not in self._trial_info:  # a restored trial keeps its bracket
                super().on_trial_add(trial_runner, trial)
                self._write_state()

        def on_trial_result(self, trial_runner, trial, result):
            self._read_state()
            action = super().on_trial_result(trial_runner, trial, result)
            self._write_state()
            return action

        def on_trial_complete(self, trial_runner, trial, result):
            self._read_state()
            super().on_trial_complete(trial_runner, trial, result)
            self._write_state()

        def on_trial_remove(self, trial_runner, trial):
            self._read_state()
            super().on_trial_remove(trial_runner, trial)
            self._write_state()

    PersistentASHA.__module__, PersistentASHA.__qualname__ = __name__, "PersistentASHA"
    return PersistentASHA


def _scheduler(options: dict, max_t: int, state_file):
    from ray.tune.schedulers import FIFOScheduler
    options = dict(options)
    if options.pop("type", "asha") == "fifo":
        return FIFOScheduler()
    max_t = int(options.pop("max_t", max_t))
    grace = min(int(options.pop("grace_period", 1)), max_t)
    # metric and mode come from TuneConfig (Ray 2.6 refuses them in both places)
    return __getattr__("PersistentASHA")(state_file, time_attr="training_iteration", max_t=max_t,
                                    grace_period=grace, reduction_factor=options.pop("reduction_factor", 4),
                                    brackets=options.pop("brackets", 1))


def sweep_state(out: Path) -> str:
    """What ``out`` holds: ``"resumable"`` (its ``tuner.pkl`` *and* a saved experiment state),
    ``"stopped_early"`` (``tuner.pkl`` only: Ray writes it when the Tuner is built, before any
    state, so a sweep stopped in between has nothing to continue and is started afresh) or
    ``"none"``."""
    from ray import tune as ray_tune
    if not ray_tune.Tuner.can_restore(out):
        return "none"
    return "resumable" if any(out.glob("experiment_state-*.json")) else "stopped_early"


def tune(model: str = "SASRec", dataset: str = "ml-100k", method: str = "genair", config_file_list=None,
         search_space=None, num_samples: Optional[int] = None, max_concurrent: Optional[int] = None,
         ray_address: Optional[str] = None, overrides: Optional[dict] = None, out_dir=None,
         cpus_per_trial: int = 1, num_cpus: Optional[int] = None, evaluate_best: bool = True) -> SweepReport:
    """Run a sweep; see the module docstring.

    ``search_space``: a YAML path, a mapping in the same format, or ``None`` for
    ``properties/tune/<method>.yaml``.  ``overrides``: RecBole settings for every trial
    (``run_recbole_genair.py`` passes its ``--key=value`` arguments here; ``sys.argv`` is not
    read).  ``num_cpus`` sizes a local Ray (default: all
    cores); ``cpus_per_trial`` is each trial's reservation and torch thread count.
    ``out_dir``: the sweep's directory (default ``ray_results/<dataset>-<model>-<method>-<time>``);
    one holding an interrupted sweep of the same settings is resumed.
    """
    import ray
    from ray import air
    from ray import tune as ray_tune

    model_class(model, method)  # unknown names: one-line error before anything else
    if num_samples is not None and num_samples < 1:
        raise UsageError(f"--num_samples must be at least 1, got {num_samples}")
    if search_space is None:
        space = load_search_space(default_search_space(model_method(method)))  # an ablation: its model's
    elif isinstance(search_space, dict):
        space = parse_search_space(search_space)
    else:
        space = load_search_space(search_space)
    overrides = dict(overrides or {})
    fixed = sorted(set(space.params) & set(method_settings(method)))
    if fixed:
        raise UsageError(f"{space.source} sweeps {fixed}, which method {method} fixes; "
                         "pass a --search_space without them")
    clash = set(space.params) & set(overrides)
    if clash:
        raise UsageError(f"{sorted(clash)} swept by {space.source} and also set on the command line")
    files = [os.path.abspath(f) for f in config_file_list or []] or None
    base = _absolute_paths({**_relative_paths_in(files), **space.fixed, **overrides})

    # Fail fast on the driver (unknown model/method/data set, broken YAML) before Ray starts.
    config = build_config(model, dataset, method, files, base)
    metric = "valid_" + config["valid_metric"].lower()
    mode = "max" if config["valid_metric_bigger"] else "min"
    unknown = [k for k in space.params if k not in config.final_config_dict]
    if unknown:
        _say(f"warning: swept key(s) {unknown} are set by no YAML layer of {model}/{method}; "
             "check the spelling (the model may ignore them)")
    num_samples = num_samples or space.default_num_samples()
    n_trials = space.grid_size * num_samples

    stamp = time.strftime("%Y%m%d-%H%M%S")   # + pid: two sweeps started in one second get two folders
    out = Path(out_dir) if out_dir else Path(DEFAULT_RESULTS_DIR) / f"{dataset}-{model}-{method}-{stamp}-{os.getpid()}"
    out = out.resolve()
    # resolved: every YAML layer's value (the files' contents, package defaults) and the data
    # files' SHA-1, so a sweep is resumed only while what its trials train on is unchanged
    setup = {"model": model, "dataset": dataset, "method": method, "config_file_list": files,
             "base": base, "cpus_per_trial": cpus_per_trial, "resolved": resolved_settings(config)}
    identity = sweep_identity(setup, space, num_samples)
    state = sweep_state(out)
    resuming = state == "resumable"
    if resuming or (out / SWEEP_FILE).is_file():
        check_same_sweep(out, identity)
    if state == "stopped_early":
        _say(f"{out} holds a sweep stopped before Ray saved any trial state; starting it afresh")
    if resuming and max_concurrent is not None:
        _say(f"warning: --max_concurrent={max_concurrent} is ignored: a resumed sweep keeps the "
             "concurrency it was started with (Ray restores it with the sweep)")
    resume_command = _resume_command(out)
    _say(f"{n_trials} trial(s) of {model}/{method} on {dataset} from {space.source}; "
         f"selecting on {metric} ({mode}); {cpus_per_trial} CPU(s) per trial; output {out}")
    _say(("resuming the interrupted sweep in " if resuming else "if interrupted, continue with: ")
         + (str(out) if resuming else resume_command))

    trainable = ray_tune.with_resources(ray_tune.with_parameters(genair_trial, setup=setup),
                                        {"cpu": cpus_per_trial})
    out.mkdir(parents=True, exist_ok=True)
    started = init_ray(ray_address, num_cpus)
    try:
        if ray_address and ray_address != LOCAL:
            check_shared_storage(out)
        if resuming:
            tuner = ray_tune.Tuner.restore(str(out), trainable=trainable, resume_unfinished=True,
                                           resume_errored=True, param_space=space.ray_space())
        else:
            (out / SWEEP_FILE).write_text(json.dumps(identity, indent=2), encoding="utf-8")
            (out / SCHEDULER_FILE).unlink(missing_ok=True)  # a sweep started afresh
            tuner = ray_tune.Tuner(
                trainable, param_space=space.ray_space(),
                tune_config=ray_tune.TuneConfig(
                    metric=metric, mode=mode, num_samples=num_samples, max_concurrent_trials=max_concurrent,
                    scheduler=_scheduler(space.scheduler, int(config["epochs"]), out / SCHEDULER_FILE),
                    reuse_actors=False, trial_dirname_creator=_trial_dirname),
                run_config=air.RunConfig(name=out.name, storage_path=str(out.parent),
                                         failure_config=air.FailureConfig(max_failures=0),
                                         checkpoint_config=air.CheckpointConfig(num_to_keep=1), verbose=1))
        result_grid = tuner.fit()
        unfinished = unfinished_trial_ids(result_grid)
    finally:
        if started:
            ray.shutdown()

    trials, history = collect_trials(result_grid, space, metric, mode, frozenset(unfinished))
    not_started = max(n_trials - len(trials), 0)  # an interrupted sweep may not have created them yet
    header = (f"# Sweep: {model} / {method} on {dataset}\n\n{n_trials} trial(s): "
              f"{sum(t['status'] == 'ok' for t in trials)} finished, "
              f"{sum(t['status'] == 'failed' for t in trials)} failed, {len(unfinished)} unfinished, "
              f"{not_started} not started; search space {space.source}")
    if unfinished or not_started:
        report = SweepReport(out_dir=out, metric=metric, mode=mode, trials=trials, history=history,
                             best=None, commands={}, resume_command=resume_command)
        write_report(report, header)
        _say(f"interrupted with {len(unfinished)} trial(s) unfinished (their progress is kept) and "
             f"{not_started} not started; continue with: {resume_command}")
        return report
    best_trial = next((t for t in trials if t["status"] == "ok"), None)
    commands, best = {}, None
    if best_trial is not None:
        best_params = {k.removeprefix("param/"): v for k, v in best_trial.items() if k.startswith("param/")}
        trial_settings = best_trial_settings(best_trial, base, best_params, int(config["epochs"]))
        commands = {"trial": reproduce_command(model, dataset, method, files, trial_settings),
                    "protocol": reproduce_command(model, dataset, method, files,
                                                  {**_absolute_paths(overrides), **best_params})}
        best = {"trial_id": best_trial["trial_id"], "params": best_params, metric: best_trial[metric],
                "best_epoch": best_trial.get("best_epoch")}
        if evaluate_best:
            best.update(_final_evaluation(best_trial, setup, trial_settings, out))
    report = SweepReport(out_dir=out, metric=metric, mode=mode, trials=trials, history=history,
                         best=best, commands=commands)
    write_report(report, header)
    _say(f"{len(trials) - len(report.failed)} trial(s) finished, {len(report.failed)} failed; "
         f"wrote {out / 'summary.md'} and {out / 'trials.csv'}")
    if best:
        _say(f"best {best['trial_id']}: {best['params']} {metric}={best[metric]:.4f}; "
             f"test {best.get('test_result', {})}")
    return report


def check_shared_storage(out: Path) -> None:
    """Refuse a cluster on which some node cannot see ``out`` (see the module docstring)."""
    marker = out / f".visible-{os.getpid()}"
    marker.write_text("", encoding="utf-8")
    try:
        blind = nodes_not_seeing(marker)
    finally:
        marker.unlink()
    if blind:
        raise UsageError(f"--out {out} is not visible on Ray node(s) {', '.join(blind)}: on a multi-node "
                         "cluster the sweep's directory must be on storage every node mounts at the same "
                         "path (e.g. NFS), since Ray 2.6 no longer copies trial checkpoints to the head node")


def sweep_identity(setup: dict, space: SearchSpace, num_samples: int) -> dict:
    """What makes two sweeps the same one (JSON-normalised, as stored in ``sweep.json``)."""
    identity = {**setup, "search_space": {k: [kind, values] for k, (kind, values) in space.params.items()},
                "scheduler": space.scheduler, "num_samples": num_samples}
    return json.loads(json.dumps(identity, default=str))


def check_same_sweep(out: Path, identity: dict) -> None:
    """Refuse to resume ``out`` with other settings than those it was started with."""
    stored_file = out / SWEEP_FILE
    if not stored_file.is_file():
        raise UsageError(f"{out} holds a Ray Tune experiment without {SWEEP_FILE}: not a sweep of this "
                         "tool; choose another --out")
    stored = json.loads(stored_file.read_text(encoding="utf-8"))
    if stored != identity:
        outer = [{k: json.dumps(v, sort_keys=True) for k, v in d.items() if k != "resolved"}
                 for d in (stored, identity)]
        changes = settings_changes(*outer) + [f"resolved {c}" for c in settings_changes(
            stored.get("resolved", {"(not recorded by the version that started it)": "–"}),
            identity.get("resolved", {}))]
        raise UsageError(f"{out} holds a sweep with other settings ({'; '.join(changes)}); "
                         "run the same command as before to continue it, or choose another --out")


def _resume_command(out: Path) -> str:
    """How to continue this sweep: the command line with ``--out``, or the API call."""
    if sys.argv and Path(sys.argv[0]).name == "run_recbole_genair.py":
        args = [a for a in sys.argv[1:] if not a.startswith("--out=")]
        return shlex.join(["python", sys.argv[0], *args, f"--out={out}"])
    return f"tune(..., out_dir={str(out)!r}) with the same arguments"


@contextlib.contextmanager
def _working_directory(path: Path):
    """RecBole writes ``./log/`` and ``./log_tensorboard/``; keep the driver's inside ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _final_evaluation(best_trial: dict, setup: dict, trial_settings: dict, out: Path) -> dict:
    """Test metrics of the best trial: its checkpoint if visible here, else a re-run of
    ``trial_settings`` (the sweep's fixed settings, its values and the epochs it trained)."""
    with _working_directory(out / "best"):
        return _evaluate_best(best_trial, setup, trial_settings, out)


def _evaluate_best(best_trial: dict, setup: dict, trial_settings: dict, out: Path) -> dict:
    model_file = best_trial.get("saved_model_file")
    try:
        if model_file and os.path.isfile(model_file):
            _say(f"evaluating the best trial's checkpoint {model_file} on valid and test")
            return evaluate_checkpoint(model_file)
        from recbole_genair.quick_start import run
        _say("best trial's checkpoint is not on this machine; re-running its configuration")
        config_dict = {**trial_settings, "checkpoint_dir": str(out / "best" / "saved")}
        result = run(setup["model"], setup["dataset"], setup["method"], setup["config_file_list"],
                     config_dict, saved=True)
        return {"valid_result": result["best_valid_result"], "test_result": result["test_result"],
                "source": "re-run of the best configuration"}
    except Exception as exc:  # the sweep's results are still written; the failure is shown
        _say(f"final evaluation failed: {type(exc).__name__}: {exc}")
        return {"final_error": f"{type(exc).__name__}: {exc}"}


__all__ = ["SearchSpace", "SweepReport", "parse_search_space", "load_search_space", "tune",
           "genair_trial", "collect_trials", "write_report", "evaluate_checkpoint", "sweep_identity"]
