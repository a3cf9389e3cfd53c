"""Ray Tune sweeps: search-space parsing, validation-only selection, failed trials reported,
interrupted sweeps resumed."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recbole_genair.config import command_line_overrides
from recbole_genair.paths import PROPERTIES_DIR
from recbole_genair.quick_start import build_config, run
from recbole_genair.tune import load_search_space, parse_search_space, reproduce_command, tune


def test_search_space_format_and_errors():
    space = parse_search_space({"a": {"grid": [1, 2, 3]}, "b": {"grid": ["x", "y"]},
                                "lr": {"loguniform": [1e-4, 1e-2]}, "fixed": {"epochs": 5},
                                "scheduler": {"type": "fifo"}})
    assert space.grid_size == 6 and space.default_num_samples() == 1
    assert space.fixed == {"epochs": 5} and space.scheduler == {"type": "fifo"}
    assert parse_search_space({"lr": {"uniform": [0, 1]}}).default_num_samples() == 10
    for bad, message in [({"a": [1, 2]}, "must be one of"), ({"a": {"grid": []}}, "non-empty"),
                         ({"a": {"loguniform": [0, 1]}}, "lo > 0"), ({"a": {"uniform": [2, 1]}}, "lo < hi"),
                         ({"a": {"grid": [1]}, "fixed": {"a": 2}}, "both swept and fixed"),
                         ({"scheduler": {"kind": "asha"}}, "unknown scheduler")]:
        with pytest.raises(ValueError, match=message):
            parse_search_space(bad)


def test_shipped_search_spaces_sweep_known_keys_and_genair_is_the_paper_grid(data_root):
    for method in ("genair", "base", "llminit", "rlmrec", "alphafuse", "llmesr", "llmemb"):
        space = load_search_space(PROPERTIES_DIR / "tune" / f"{method}.yaml")
        config = build_config("SASRec", "ml-100k", method, config_dict={"data_path": str(data_root)})
        assert [k for k in space.params if k not in config.final_config_dict] == [], method
    genair = load_search_space(PROPERTIES_DIR / "tune" / "genair.yaml")
    assert genair.params["calibration_alpha"] == ("grid", [1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1])
    assert genair.params["calibration_gamma"] == ("grid", [0, 1, 2, 3, 4, 5])
    assert genair.grid_size == 42


def test_command_line_overrides_skip_runner_options_convert_values_and_refuse_strays():
    argv = ["--model=SASRec", "--method=genair", "--search_space=s.yaml", "--epochs=5",
            "--learning_rate=0.01", "--genair_features=['prefill']", "--loss_type=CE"]
    assert command_line_overrides(argv, exclude={"model", "method", "search_space"}) == {
        "epochs": 5, "learning_rate": 0.01, "genair_features": ["prefill"], "loss_type": "CE"}
    for stray in (["--epochs", "5"], ["--tune"], ["--a=b=c"]):
        with pytest.raises(ValueError, match="unrecognised argument"):
            command_line_overrides(["--seed=1", *stray])
    with pytest.raises(ValueError, match="given twice"):
        command_line_overrides(["--seed=1", "--seed=2"])
    command = reproduce_command("SASRec", "ml-100k", "base", None,
                                {"epochs": 5, "genair_features": ["prefill"], "checkpoint_dir": "/x"})
    assert "--epochs=5" in command and "'--genair_features=['\"'\"'prefill'\"'\"']'" in command
    assert "checkpoint_dir" not in command


def test_two_trial_sweep_reports_valid_metrics_and_the_failed_trial(fast_config, tmp_path):
    """One good trial (2 epochs, a validation report each) and one whose model raises."""
    overrides = {k: v for k, v in fast_config.items() if k != "epochs"}
    space = {"loss_type": {"grid": ["CE", "NOPE"]}, "fixed": {"epochs": 2, "eval_step": 1}}  # ASHA
    report = tune(model="SASRec", dataset="ml-100k", method="base", search_space=space,
                  overrides=overrides, out_dir=tmp_path / "sweep", max_concurrent=1, num_cpus=2)
    metric = report.metric
    assert metric == "valid_ndcg@10" and report.mode == "max"
    ok, failed = report.trials
    assert ok["status"] == "ok" and ok["param/loss_type"] == "CE" and ok["rank"] == 1
    assert failed["status"] == "failed" and failed["param/loss_type"] == "NOPE"
    assert "loss_type" in failed["error"] and failed["error_file"].endswith("error.txt")
    assert failed.get(metric) is None  # never a score of 0

    # Validation metrics every epoch; nothing a trial reports is a test metric.
    ok_history = [h for h in report.history if h["trial_id"] == ok["trial_id"]]
    assert [h["training_iteration"] for h in ok_history] == [1, 2]
    assert all(0 <= h[metric] <= 1 and "valid_hit@10" in h for h in ok_history)
    reported = [json.loads(line) for f in report.out_dir.rglob("result.json")   # what trials sent Ray
                for line in f.read_text().splitlines() if line.strip()]
    assert any("valid_ndcg@10" in r for r in reported)
    assert not any(k.startswith("test") for r in reported for k in r)
    assert ok[metric] == max(h[metric] for h in ok_history)

    # Test metrics exist only for the best trial, evaluated after the sweep from its checkpoint.
    best = report.best
    assert best["trial_id"] == ok["trial_id"] and best["params"] == {"loss_type": "CE"}
    assert best["source"].startswith("checkpoint ")
    assert set(best["test_result"]) >= {"hit@10", "ndcg@10"}
    assert best["valid_result"]["ndcg@10"] == pytest.approx(ok[metric], abs=1e-4)
    assert "--loss_type=CE" in report.commands["trial"] and "--epochs=2" in report.commands["trial"]
    assert "--epochs=2" not in report.commands["protocol"]

    out = report.out_dir
    with open(out / "trials.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["ok", "failed"] and "loss_type" in rows[1]["error"]
    assert not any(c.startswith("test") for c in rows[0])
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "## Failed trials" in summary and "python run_recbole_genair.py" in summary
    assert json.loads((out / "best.json").read_text())["best"]["trial_id"] == ok["trial_id"]

    # The same command again: the finished trial is kept, the failed one is retried (a lost node
    # would have failed it the same way) and, failing for its own reason, reported again.
    again = tune(model="SASRec", dataset="ml-100k", method="base", search_space=space,
                 overrides=overrides, out_dir=out, max_concurrent=1, num_cpus=2, evaluate_best=False)
    ok_again, failed_again = again.trials
    assert ok_again["trial_id"] == ok["trial_id"] and ok_again[metric] == ok[metric]
    assert ok_again["iterations"] == 2                               # not trained again
    assert failed_again["status"] == "failed" and "loss_type" in failed_again["error"]
    assert "Failure # 2" in Path(failed_again["error_file"]).read_text(encoding="utf-8")  # it ran again


def test_interrupted_sweep_continues_its_trial_to_the_uninterrupted_numbers(fast_config, tmp_path, capfd):
    """Ctrl-C after the trial's second epoch; the same call with the same out_dir resumes it.

    The resumed trial must continue after its last reported epoch (no epoch trained or
    reported twice) and report exactly the validation curve of an uninterrupted run.
    """
    epochs = 6  # the interrupt lands after epoch 2; Ctrl-C's handling has four epochs to spare
    overrides = {**{k: v for k, v in fast_config.items() if k != "epochs"}, "state": "INFO"}
    space = {"hidden_dropout_prob": {"grid": [0.2]}, "fixed": {"epochs": epochs, "eval_step": 1,
                                                         "stopping_step": epochs},
             "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}}  # rungs kept
    out = tmp_path / "sweep"
    call = (f"tune(model='SASRec', dataset='ml-100k', method='base', search_space={space!r}, "
            f"overrides={overrides!r}, out_dir={str(out)!r}, max_concurrent=1, num_cpus=1, "
            "evaluate_best=False)")
    driver = subprocess.Popen([sys.executable, "-c", f"from recbole_genair.tune import tune; {call}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    # Wait until the driver has *registered* a checkpoint, not merely until the worker wrote
    # one: between the two, a Ctrl-C leaves the trial without a checkpoint in the sweep's
    # state and it restarts from scratch (seen on a loaded machine).  With num_to_keep=1 the
    # driver deletes epoch 1's checkpoint when it registers epoch 2's.  Any later checkpoint
    # also counts, so a poll that misses epoch 2's does not wait out the deadline.
    while not (list(out.glob("trial_*/checkpoint_*/progress.pth"))
               and not list(out.glob("trial_*/checkpoint_000000"))):
        assert driver.poll() is None, driver.stdout.read()
        assert time.monotonic() < deadline, "no registered trial checkpoint within 300 s"
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, output
    assert "interrupted with 1 trial(s) unfinished (their progress is kept) and 0 not started; " \
           "continue with: tune(" in output
    with open(out / "trials.csv", encoding="utf-8") as fh:
        (first_run,) = list(csv.DictReader(fh))
    assert first_run["status"] == "unfinished" and not first_run["rank"]
    assert 1 <= int(first_run["iterations"]) < epochs
    assert "Continue the sweep with" in (out / "summary.md").read_text(encoding="utf-8")

    report = tune(model="SASRec", dataset="ml-100k", method="base", search_space=space, overrides=overrides,
                  out_dir=out, max_concurrent=1, num_cpus=1, evaluate_best=False)
    (trial,) = report.trials
    assert trial["status"] == "ok" and report.resume_command is None
    assert "ASHA rungs restored from" in capfd.readouterr().err
    history = [h for h in report.history if h["trial_id"] == trial["trial_id"]]
    assert [h["training_iteration"] for h in history] == list(range(1, epochs + 1))
    assert [h["epoch"] for h in history] == list(range(epochs))
    logs = [p.read_text(encoding="utf-8") for p in (out / f"trial_{trial['trial_id']}").glob("log/**/*.log")]
    assert len(logs) == 2 and sum("resumed from" in log for log in logs) == 1  # not trained again

    plain = run("SASRec", "ml-100k", "base", None,
                {**overrides, **space["fixed"], "hidden_dropout_prob": 0.2, "checkpoint_dir": str(tmp_path / "plain")})
    assert [h["valid_ndcg@10"] for h in history] == pytest.approx(plain["valid_curve"], abs=1e-6)


def test_a_sweep_directory_is_resumed_only_with_its_own_settings(tmp_path):
    from recbole_genair.tune import check_same_sweep, sweep_identity
    space = parse_search_space({"calibration_alpha": {"grid": [1e-4, 0.1]}})
    setup = {"model": "SASRec", "dataset": "ml-100k", "method": "genair", "config_file_list": None,
             "base": {"epochs": 3}, "cpus_per_trial": 1}
    (tmp_path / "sweep.json").write_text(json.dumps(sweep_identity(setup, space, 1)), encoding="utf-8")
    check_same_sweep(tmp_path, sweep_identity(setup, space, 1))
    with pytest.raises(ValueError, match=r"other settings \(base: .*3.* → .*5"):
        check_same_sweep(tmp_path, sweep_identity({**setup, "base": {"epochs": 5}}, space, 1))
    # a YAML layer's content or a data file changed between the runs: named key by key
    resolved = {**setup, "resolved": {"learning_rate": "0.001", "data:ml-100k.inter": "abc"}}
    (tmp_path / "sweep.json").write_text(json.dumps(sweep_identity(resolved, space, 1)), encoding="utf-8")
    with pytest.raises(ValueError, match=r"other settings \(resolved data:ml-100k.inter: abc → def\)"):
        check_same_sweep(tmp_path, sweep_identity({**resolved, "resolved": {"learning_rate": "0.001",
                                                                            "data:ml-100k.inter": "def"}}, space, 1))
    with pytest.raises(ValueError, match="without sweep.json"):
        check_same_sweep(tmp_path / "elsewhere", sweep_identity(setup, space, 1))


def test_an_ablation_sweeps_its_models_space_but_never_the_setting_it_fixes(tmp_path):
    from recbole_genair.registry import UsageError
    with pytest.raises(UsageError, match=r"sweeps \['calibration_alpha'\], which method genair_wo_calibration fixes"):
        tune(model="SASRec", dataset="ml-100k", method="genair_wo_calibration", out_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_a_tied_best_epoch_is_the_later_one_whose_weights_recbole_kept():
    """RecBole's early_stopping saves on value >= best: of two tied epochs, the later one's
    weights (and its saved_model_file row) are the trial's best."""
    from types import SimpleNamespace

    import pandas as pd

    from recbole_genair.tune import collect_trials
    rows = [{"training_iteration": i + 1, "epoch": i, "valid_ndcg@10": v, "valid_hit@10": h, "saved_model_file": "m.pth"}
            for i, (v, h) in enumerate([(0.1, 0.2), (0.3, 0.4), (0.3, 0.5), (0.2, 0.3)])]
    result = SimpleNamespace(log_dir=None, metrics={"trial_id": "t1"}, config={"calibration_alpha": 0.1},
                             metrics_dataframe=pd.DataFrame(rows), error=None)
    trials, _ = collect_trials([result], SimpleNamespace(params={"calibration_alpha": None}), "valid_ndcg@10", "max")
    assert trials[0]["best_epoch"] == 2 and trials[0]["valid_hit@10"] == 0.5 and trials[0]["status"] == "ok"


class _Trial:
    def __init__(self, trial_id):
        self.trial_id = trial_id


def test_asha_rungs_survive_a_resume_so_the_same_trials_are_stopped(tmp_path):
    """Ray 2.6 restores a sweep's scheduler as it was built (empty rungs); ours reads the rungs
    it wrote after every report, so a poor trial after the resume is judged against them."""
    import pickle

    from recbole_genair.tune import SCHEDULER_FILE, _scheduler
    state = tmp_path / SCHEDULER_FILE
    built = _scheduler({"grace_period": 1, "reduction_factor": 2}, 4, state)
    built.set_search_properties("valid_ndcg@10", "max")
    as_in_tuner_pkl = pickle.dumps(built)  # what Tuner.restore unpickles

    def report(scheduler, trial, value):
        return scheduler.on_trial_result(None, trial, {"training_iteration": 1, "valid_ndcg@10": value})

    for i, value in enumerate([0.30, 0.32, 0.34]):
        built.on_trial_add(None, _Trial(f"t{i}"))
        assert report(built, _Trial(f"t{i}"), value) == "CONTINUE"

    restored = pickle.loads(as_in_tuner_pkl)
    for i in range(3):
        restored.on_trial_add(None, _Trial(f"t{i}"))     # Ray re-adds the restored trials
    restored.on_trial_add(None, _Trial("poor"))
    assert report(restored, _Trial("poor"), 0.10) == "STOP"
    # without the state file the restored scheduler has nothing to compare with
    state.unlink()
    blank = pickle.loads(as_in_tuner_pkl)
    blank.on_trial_add(None, _Trial("poor"))
    assert report(blank, _Trial("poor"), 0.10) == "CONTINUE"


def test_a_sweep_stopped_before_its_first_state_save_starts_afresh(tmp_path):
    from recbole_genair.tune import sweep_state
    assert sweep_state(tmp_path) == "none"
    (tmp_path / "tuner.pkl").write_bytes(b"")
    # not resumable: Ray would raise "no experiment checkpoint data" forever
    assert sweep_state(tmp_path) == "stopped_early"
    (tmp_path / "experiment_state-2026-12-04_09-00-00.json").write_text("{}", encoding="utf-8")
    assert sweep_state(tmp_path) == "resumable"


def test_the_best_trial_command_trains_the_epochs_asha_let_it_train():
    from recbole_genair.tune import best_trial_settings
    base = {"epochs": 8, "learning_rate": 0.01}
    stopped = best_trial_settings({"epochs_trained": 3}, base, {"calibration_alpha": 0.1}, 50)
    assert stopped == {"epochs": 3, "learning_rate": 0.01, "calibration_alpha": 0.1}
    assert best_trial_settings({"epochs_trained": 8}, base, {}, 50)["epochs"] == 8
    assert "epochs" not in best_trial_settings({"epochs_trained": 50}, {}, {}, 50)   # ran them all
    assert best_trial_settings({"epochs_trained": 4}, {}, {}, 50)["epochs"] == 4


def test_relative_paths_inside_config_files_reach_the_trials_absolute(tmp_path, monkeypatch):
    from recbole_genair.tune import _relative_paths_in
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("data_path: data/\narchetype_feature_file: /abs/f.archetype\nepochs: 3\n", encoding="utf-8")
    second.write_text("archetype_feature_file: feats/x.archetype\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert _relative_paths_in([str(first), str(second)]) == {
        "data_path": str(tmp_path / "data"), "archetype_feature_file": str(tmp_path / "feats" / "x.archetype")}
    assert _relative_paths_in([str(first)]) == {"data_path": str(tmp_path / "data")}


def test_bad_sweep_arguments_are_usage_errors(tmp_path):
    from recbole_genair.registry import UsageError
    with pytest.raises(UsageError, match="must be one of"):
        parse_search_space({"a": [1, 2]})
    with pytest.raises(UsageError, match="--num_samples must be at least 1"):
        tune(model="SASRec", dataset="ml-100k", method="base", search_space={"learning_rate": {"grid": [0.01]}},
             num_samples=0, out_dir=tmp_path / "s")
    with pytest.raises(UsageError, match="also set on the command line"):
        tune(model="SASRec", dataset="ml-100k", method="base", search_space={"learning_rate": {"grid": [0.01]}},
             overrides={"learning_rate": 0.1}, out_dir=tmp_path / "s")


def test_a_node_that_cannot_see_the_sweep_directory_is_named(tmp_path):
    import ray

    from recbole_genair.cluster import init_ray, nodes_not_seeing
    seen = tmp_path / "marker"
    seen.write_text("", encoding="utf-8")
    started = init_ray(None, 1)
    try:
        assert nodes_not_seeing(seen) == []
        (ip,) = nodes_not_seeing(tmp_path / "absent")
        assert ip == ray.util.get_node_ip_address()
    finally:
        if started:
            ray.shutdown()
