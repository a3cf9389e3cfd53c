"""Table 2 runner: layout, bold best, improvement and t-test, resuming, and one real cell."""
from __future__ import annotations

import csv
import json

import pytest
from scipy.stats import ttest_ind

import recbole_genair.experiments as experiments
from recbole_genair.experiments import ResultStore, main, run_experiments

# (model, method) -> HR@10 level; NDCG@10 is half of it.  GenAIR wins on SASRec, LLMInit on GRU4Rec.
LEVEL = {("SASRec", "base"): 0.30, ("SASRec", "llminit"): 0.32, ("SASRec", "genair"): 0.36,
         ("GRU4Rec", "base"): 0.25, ("GRU4Rec", "llminit"): 0.31, ("GRU4Rec", "genair"): 0.29}
JITTER = {0: 0.0, 1: 0.01, 2: -0.005, 3: 0.004}


class FakeRun:
    """Deterministic stand-in for ``quick_start.run`` that counts its calls."""

    def __init__(self, fail=()):
        self.calls = []
        self.fail = set(fail)

    def __call__(self, model, dataset, method, config_file_list=None, config_dict=None, saved=True,
                 callback=None):
        seed = config_dict["seed"]
        self.calls.append((model, method, seed, dict(config_dict)))
        if (model, method, seed) in self.fail:
            raise RuntimeError(f"boom {model} {method}")
        hit = LEVEL[(model, method)] + JITTER[seed % 4]
        return {"model": model, "method": method, "dataset": dataset, "best_valid_score": hit / 2,
                "valid_score_bigger": True, "best_valid_result": {"hit@10": hit, "ndcg@10": hit / 2},
                "test_result": {"hit@10": hit, "ndcg@10": hit / 2, "hit@5": hit / 3},
                "saved_model_file": "x.pth", "protocol": "100 fixed sampled negatives per user"}


class FakeSettings:
    """Stand-in for ``cell_settings`` ('toy' has no YAML): a resolved setting per (model, method)."""

    def __init__(self):
        self.value = {}

    def __call__(self, dataset, model, method, config_file_list, overrides):
        return {"learning_rate": self.value.get((model, method), "0.001"), "data:toy.inter": "abc"}


@pytest.fixture()
def fake_settings(monkeypatch):
    settings = FakeSettings()
    monkeypatch.setattr(experiments, "cell_settings", settings)
    return settings


@pytest.fixture()
def fake(monkeypatch, fake_settings):
    fake_run = FakeRun()
    monkeypatch.setattr(experiments, "run", fake_run)
    monkeypatch.setattr(experiments, "model_class", lambda model, method: None)  # 'llminit' is fake
    return fake_run


def grid(out, **kwargs):
    args = dict(dataset="toy", models=["SASRec", "GRU4Rec"], methods=["base", "llminit", "genair"],
                seeds=3, overrides={"seed": 100, "epochs": 5}, out=out)
    args.update(kwargs)
    return run_experiments(**args)


def test_table_layout_bold_best_improvement_and_ttest(fake, tmp_path):
    outcome = grid(tmp_path)
    assert len(fake.calls) == 2 * 3 * 3 and outcome.ran == 18 and not outcome.failures
    assert sorted({c[2] for c in fake.calls}) == [100, 101, 102]  # seed = base seed + k
    assert all(c[3]["epochs"] == 5 and c[3]["checkpoint_dir"].endswith("saved") for c in fake.calls)

    lines = (tmp_path / "table2.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| Backbone"))
    assert header.split(" | ")[:5] == ["| Backbone", "Metric", "base", "llminit", "genair"]
    body = [line for line in lines if line.startswith("| SASRec") or line.startswith("| GRU4Rec")]
    assert [line.split(" | ")[:2] for line in body] == [
        ["| SASRec", "HR@10"], ["| SASRec", "NDCG@10"], ["| GRU4Rec", "HR@10"], ["| GRU4Rec", "NDCG@10"]]

    def cells(line):
        return [c.strip() for c in line.strip("|").split("|")]

    sas_hr = cells(body[0])
    hits = {m: [LEVEL[("SASRec", m)] + JITTER[s % 4] for s in (100, 101, 102)] for m in ("llminit", "genair")}
    mean = sum(hits["genair"]) / 3
    assert sas_hr[4].startswith(f"**{mean:.4f} ± ") and sas_hr[4].endswith("**")   # GenAIR best, bold
    assert "**" not in sas_hr[2] + sas_hr[3]
    gain = (mean / (sum(hits["llminit"]) / 3) - 1) * 100
    assert sas_hr[5] == f"{gain:+.2f}% vs llminit"
    p = ttest_ind(hits["genair"], hits["llminit"]).pvalue
    assert sas_hr[6] == (f"{p:.2e}" if p < 1e-3 else f"{p:.3f}")
    gru_hr = cells(body[2])
    assert gru_hr[3].startswith("**") and gru_hr[5].startswith("-")              # baseline best on GRU4Rec

    with open(tmp_path / "table2.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["backbone"], r["metric"]) for r in rows] == [
        ("SASRec", "hit@10"), ("SASRec", "ndcg@10"), ("GRU4Rec", "hit@10"), ("GRU4Rec", "ndcg@10")]
    assert rows[0]["best"] == "genair" and rows[0]["best_baseline"] == "llminit"
    assert float(rows[0]["p_value"]) == pytest.approx(p) and float(rows[0]["genair_n"]) == 3
    assert float(rows[0]["genair_mean"]) == pytest.approx(mean)
    with open(tmp_path / "runs.csv", encoding="utf-8") as fh:
        runs = list(csv.DictReader(fh))
    assert len(runs) == 18 and "test_hit@10" in runs[0] and "valid_ndcg@10" in runs[0]


def test_second_invocation_reruns_nothing_and_new_cells_only(fake, tmp_path):
    grid(tmp_path)
    assert len(fake.calls) == 18
    before = (tmp_path / "table2.md").read_text()
    again = grid(tmp_path)
    assert len(fake.calls) == 18 and again.ran == 0 and len(again.records) == 18
    assert (tmp_path / "table2.md").read_text() == before
    grid(tmp_path, seeds=4)                                      # one more seed: only its 6 cells
    assert len(fake.calls) == 24 and {c[2] for c in fake.calls[18:]} == {103}
    grid(tmp_path, overrides={"seed": 100, "epochs": 5, "show_progress": False})  # not result-relevant
    assert len(fake.calls) == 24
    grid(tmp_path, overrides={"seed": 100, "epochs": 6}, models=["SASRec"], seeds=1)  # new config hash
    assert len(fake.calls) == 27
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 27 and len({json.loads(line)["config_hash"] for line in lines}) == 2


def test_cell_finished_under_other_resolved_settings_runs_again_and_says_why(fake, fake_settings, tmp_path, capsys):
    grid(tmp_path, methods=["base", "genair"], seeds=2)
    assert len(fake.calls) == 8
    records = ResultStore(tmp_path / "results.jsonl").load().values()
    assert all(r["settings"] == {"learning_rate": "0.001", "data:toy.inter": "abc"} for r in records)
    # e.g. a package default changed on upgrade: same command, same config hash, other settings
    fake_settings.value[("SASRec", "genair")] = "0.002"
    capsys.readouterr()
    report = grid(tmp_path, methods=["base", "genair"], seeds=2, report_only=True)
    assert len(fake.calls) == 8 and len(report.records) == 6
    assert [(m["model"], m["method"], m["seed"]) for m in report.missing] == [("SASRec", "genair", 100),
                                                                              ("SASRec", "genair", 101)]
    assert "- SASRec / genair / seed 100 (finished under other settings)" in (tmp_path / "table2.md").read_text()
    assert "SASRec / genair / seed 100 finished under other settings (learning_rate: 0.001 → 0.002)" \
        in capsys.readouterr().err
    again = grid(tmp_path, methods=["base", "genair"], seeds=2)
    assert again.ran == 2 and [c[:3] for c in fake.calls[8:]] == [("SASRec", "genair", 100), ("SASRec", "genair", 101)]
    # each cell trains with its own progress file, named by its settings: a partial run made
    # under the old settings is never resumed under the new ones
    first = {c[:3]: c[3]["progress_file"] for c in fake.calls[:8]}
    assert len(set(first.values())) == 8
    assert all(p.startswith(str(tmp_path / "saved" / "progress")) for p in first.values())
    assert fake.calls[8][3]["progress_file"] != first[("SASRec", "genair", 100)]
    assert grid(tmp_path, methods=["base", "genair"], seeds=2).ran == 0      # the new records are current
    # a record from before settings were kept counts as done, and the runner says it cannot check it
    path = tmp_path / "results.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "settings"}) + "\n" for r in lines))
    fake_settings.value[("GRU4Rec", "base")] = "0.1"
    assert grid(tmp_path, methods=["base", "genair"], seeds=2).ran == 0
    assert "8 finished cell(s) were recorded before resolved settings were kept" in capsys.readouterr().err


def test_resolved_settings_cover_package_defaults_and_data_content_not_paths(data_root, tmp_path):
    from recbole_genair.data.dataset import default_feature_file
    from recbole_genair.quick_start import build_config

    root = {"data_path": str(data_root)}   # converted in the test session (dataset/ is git-ignored)
    genair = experiments.cell_settings("ml-100k", "SASRec", "genair", None, {**root, "seed": 1})
    base = experiments.cell_settings("ml-100k", "SASRec", "base", None, {**root, "seed": 1})
    assert genair["calibration_gamma"] == "1.0" and genair["MAX_ITEM_LIST_LENGTH"] == "20"  # package YAMLs
    assert not {"seed", "data_path", "torch_threads", "archetype_feature_file", "device"} & set(genair)
    assert set(genair) - set(base) >= {"calibration_alpha", "data:ml-100k.archetype"}
    assert len(genair["data:ml-100k.inter"]) == 40 and genair["data:ml-100k.inter"] == base["data:ml-100k.inter"]
    assert experiments.cell_settings("ml-100k", "SASRec", "genair", None, {**root, "seed": 2}) == genair
    # a key added later at its result-preserving value leaves earlier cells current; another value does not
    assert "projector_dtype" not in genair and "item_id_residual" not in genair
    bf16 = experiments.cell_settings("ml-100k", "SASRec", "genair", None, {**root, "projector_dtype": "bfloat16"})
    assert experiments.settings_changes(genair, bf16) == ["projector_dtype: – → 'bfloat16'"]
    # the same feature file elsewhere: same settings; one value changed: only its fingerprint differs
    source = default_feature_file(build_config("SASRec", "ml-100k", "genair", None, dict(root)))
    copy = tmp_path / "copy.archetype"
    copy.write_bytes(source.read_bytes())
    moved = experiments.cell_settings("ml-100k", "SASRec", "genair", None, {**root, "archetype_feature_file": str(copy)})
    assert {k: v for k, v in moved.items() if k != "data:copy.archetype"} == {
        k: v for k, v in genair.items() if k != "data:ml-100k.archetype"}
    assert moved["data:copy.archetype"] == genair["data:ml-100k.archetype"]
    lines = copy.read_text().splitlines()
    lines[1] = lines[1].replace("\t", "\t9", 1)
    copy.write_text("\n".join(lines) + "\n")
    edited = experiments.cell_settings("ml-100k", "SASRec", "genair", None, {**root, "archetype_feature_file": str(copy)})
    assert experiments.settings_changes(moved, edited) == [
        f"data:copy.archetype: {moved['data:copy.archetype']} → {edited['data:copy.archetype']}"]
    # LLMEmb's pretrained ID checkpoint counts by content: trained again in place, it is a change
    ckpt = tmp_path / "id_model.pth"
    ckpt.write_bytes(b"first")
    llmemb = lambda: experiments.cell_settings("ml-100k", "SASRec", "llmemb", None,
                                               {**root, "llmemb_id_checkpoint": str(ckpt)})
    first = llmemb()
    assert "llmemb_id_checkpoint" not in first and first["data:id_model.pth"]
    ckpt.write_bytes(b"trained again")
    assert experiments.settings_changes(first, llmemb()) == [
        f"data:id_model.pth: {first['data:id_model.pth']} → {llmemb()['data:id_model.pth']}"]


def test_failed_cell_is_reported_not_stored_and_retried(monkeypatch, fake_settings, tmp_path):
    flaky = FakeRun(fail={("SASRec", "genair", 100)})
    monkeypatch.setattr(experiments, "run", flaky)
    outcome = run_experiments("toy", models=["SASRec"], methods=["base", "genair"], seeds=2,
                              overrides={"seed": 100}, out=tmp_path)
    assert outcome.ran == 3 and [f["method"] for f in outcome.failures] == ["genair"]
    assert "boom SASRec genair" in (tmp_path / "table2.md").read_text()
    assert len(ResultStore(tmp_path / "results.jsonl").load()) == 3
    flaky.fail.clear()
    again = run_experiments("toy", models=["SASRec"], methods=["base", "genair"], seeds=2,
                            overrides={"seed": 100}, out=tmp_path)
    assert again.ran == 1 and not again.failures and len(flaky.calls) == 5


def test_truncated_last_line_is_ignored(tmp_path):
    store = ResultStore(tmp_path / "results.jsonl")
    store.append({"dataset": "d", "model": "SASRec", "method": "base", "seed": 1, "config_hash": "h"})
    with open(store.path, "a", encoding="utf-8") as fh:
        fh.write('{"dataset": "d", "mod')
    assert list(store.load()) == [("d", "SASRec", "base", 1, "h")]


def test_cli_passes_recbole_settings_and_full_ranking(fake, tmp_path):
    code = main(["--dataset=toy", "--methods=base,genair", "--models=SASRec", "--seeds=2",
                 f"--out={tmp_path}", "--seed=7", "--eval_negatives=0", "--epochs=3"])
    assert code == 0
    assert [(c[1], c[2]) for c in fake.calls] == [("base", 7), ("genair", 7), ("base", 8), ("genair", 8)]
    assert all(c[3]["eval_negatives"] == 0 and c[3]["epochs"] == 3 and "methods" not in c[3]
               for c in fake.calls)
    with pytest.raises(SystemExit):
        main(["--dataset=toy", "stray"])


def test_one_real_cell(fast_config, tmp_path):
    """base SASRec, 1 epoch, on the shrunken ml-100k: the wiring to quick_start.run."""
    outcome = run_experiments("ml-100k", models=["SASRec"], methods=["base"], seeds=1,
                              overrides=fast_config, out=tmp_path)
    assert outcome.ran == 1 and not outcome.failures
    (record,) = outcome.records
    assert record["seed"] == 2020  # properties/overall.yaml's seed, k = 0
    assert 0 < record["test_result"]["ndcg@10"] <= record["test_result"]["hit@10"] <= 1
    assert record["test_result"]["ndcg@10"] > 0.06   # random among 101 candidates: about 0.045
    assert record["protocol"] == "100 fixed sampled negatives per user"
    epochs = fast_config["epochs"]
    assert record["epochs_run"] == epochs and len(record["valid_curve"]) == epochs
    assert record["valid_curve"][record["best_epoch"]] == pytest.approx(record["best_valid_score"], abs=1e-6)
    assert record["median_epoch_seconds"] > 0
    assert not list((tmp_path / "saved" / "progress").iterdir())   # recorded: the progress file is gone
    assert "| SASRec | HR@10 | **" in (tmp_path / "table2.md").read_text()
    again = run_experiments("ml-100k", models=["SASRec"], methods=["base"], seeds=1,
                            overrides=fast_config, out=tmp_path, full_ranking=True)
    assert again.ran == 0 and not again.failures
    (full,) = ResultStore(tmp_path / experiments.FULL_RANKING_FILE).load().values()
    # every item competes instead of 100 negatives: never easier, and the table shows it
    for metric in ("hit@10", "ndcg@10"):
        assert 0 <= full["test_result"][metric] <= record["test_result"][metric]
    assert f"| SASRec | HR@10 | **{full['test_result']['hit@10']:.4f}** |" in (tmp_path / "table2_full.md").read_text()


def test_report_runs_nothing_and_lists_missing_cells(fake, tmp_path):
    grid(tmp_path, methods=["base", "genair"], seeds=1)
    assert len(fake.calls) == 4
    outcome = grid(tmp_path, seeds=1, report_only=True)   # llminit never ran
    assert len(fake.calls) == 4 and outcome.ran == 0 and len(outcome.records) == 4
    assert [(m["model"], m["method"]) for m in outcome.missing] == [("SASRec", "llminit"), ("GRU4Rec", "llminit")]
    text = (tmp_path / "table2.md").read_text()
    assert "| SASRec | HR@10 | 0.3000 | – | **0.3600** |" in text
    assert "- GRU4Rec / llminit / seed 100" in text
    assert main(["--dataset=toy", "--methods=base,genair", "--models=SASRec", "--seeds=2", f"--out={tmp_path}",
                 "--seed=100", "--epochs=5", "--report"]) == 0
    assert len(fake.calls) == 4 and "- SASRec / genair / seed 101" in (tmp_path / "table2.md").read_text()


def test_full_ranking_tables_evaluate_each_checkpoint_once_and_report_missing_ones(fake, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.pth").write_bytes(b"")               # FakeRun's checkpoint name for every cell
    evaluated = []

    def fake_metrics(model_file):
        evaluated.append(model_file)
        return {"hit@10": 0.01 * len(evaluated), "ndcg@10": 0.005 * len(evaluated)}

    monkeypatch.setattr(experiments, "full_ranking_metrics", fake_metrics)
    outcome = grid(tmp_path, models=["SASRec"], methods=["base", "genair"], seeds=2, full_ranking=True)
    assert len(evaluated) == 4 and not outcome.failures
    cells = ResultStore(tmp_path / experiments.FULL_RANKING_FILE).load()
    by_cell = {(k[2], k[3]): v["test_result"]["hit@10"] for k, v in cells.items()}
    assert sorted(by_cell.values()) == pytest.approx([0.01, 0.02, 0.03, 0.04])
    text = (tmp_path / "table2_full.md").read_text()
    assert "full ranking" in text.splitlines()[0]
    base = [by_cell[("base", s)] for s in (100, 101)]
    assert f"| SASRec | HR@10 | {sum(base) / 2:.4f} ± " in text
    # the sampled-negative table is untouched by the re-ranking
    assert "| SASRec | HR@10 | 0.3050 ± " in (tmp_path / "table2.md").read_text()

    grid(tmp_path, models=["SASRec"], methods=["base", "genair"], seeds=2, report_only=True, full_ranking=True)
    assert len(evaluated) == 4                             # cached: nothing re-evaluated
    (tmp_path / "x.pth").unlink()
    outcome = grid(tmp_path, models=["SASRec"], methods=["base", "genair", "llminit"], seeds=1,
                   full_ranking=True)                      # a new cell whose checkpoint is gone
    assert len(evaluated) == 4
    assert [(f["method"], "not found" in f["error"]) for f in outcome.failures] == [("llminit", True)]
    assert "- SASRec / llminit / seed 100: saved checkpoint" in (tmp_path / "table2_full.md").read_text()
    (tmp_path / "x.pth").write_bytes(b"")                  # a checkpoint that cannot be evaluated

    def broken(model_file):
        raise RuntimeError("feature file moved")

    monkeypatch.setattr(experiments, "full_ranking_metrics", broken)
    outcome = grid(tmp_path, models=["SASRec"], methods=["llminit"], seeds=1, full_ranking=True)
    assert [f["error"] for f in outcome.failures] == ["RuntimeError: feature file moved"]
    assert "table2_full.md" in {p.name for p in outcome.files.values()}


def test_training_summary_picks_the_epoch_early_stopping_keeps():
    from recbole_genair.trainer import GenAIRTrainer
    trainer = object.__new__(GenAIRTrainer)   # only the bookkeeping, no model
    trainer.valid_metric_bigger = True
    trainer.epoch_seconds = [3.0, 1.0, 2.0, 5.0]
    trainer.valid_curve = [(0, 0.1), (1, 0.3), (2, 0.3), (3, 0.2)]
    summary = trainer.training_summary()
    # a tie: RecBole's early_stopping (value >= best) saves the later epoch's weights
    assert summary == {"epochs_run": 4, "best_epoch": 2, "valid_curve": [0.1, 0.3, 0.3, 0.2],
                       "median_epoch_seconds": 2.5}
    trainer.valid_metric_bigger = False           # e.g. a loss as the valid metric
    assert trainer.training_summary()["best_epoch"] == 0
    trainer.valid_curve = [(1, 0.2), (3, 0.1)]    # eval_step 2: epochs stay the training epochs
    assert trainer.training_summary()["best_epoch"] == 3


def test_pvalue_text():
    assert experiments.pvalue_text(None) == "" and experiments.pvalue_text(float("nan")) == "n/a"
    assert experiments.pvalue_text(0.0123) == "0.012" and experiments.pvalue_text(2.5e-7) == "2.50e-07"
    assert experiments.pvalue_text(0.0) == "< 1e-300"


def test_ablations_are_columns_with_their_own_p_values_never_the_best_baseline(fake, tmp_path, monkeypatch):
    """Paper Table 3 in one command: an ablation above every baseline is still not one."""
    monkeypatch.setitem(LEVEL, ("SASRec", "genair_wo_prefill"), 0.35)
    monkeypatch.setitem(LEVEL, ("SASRec", "genair_wo_calibration"), 0.36)
    grid(tmp_path, models=["SASRec"], methods=["base", "genair", "genair_wo_prefill", "genair_wo_calibration"])
    lines = (tmp_path / "table2.md").read_text().splitlines()

    def cells(prefix):
        return [c.strip() for c in next(line for line in lines if line.startswith(prefix)).strip("|").split("|")]
    assert cells("| Backbone")[6:] == ["Improv. (GenAIR vs best baseline)", "p-value",
                                       "p (GenAIR vs genair_wo_prefill)", "p (GenAIR vs genair_wo_calibration)"]
    hr = cells("| SASRec | HR@10")
    assert hr[6].endswith("vs base")   # genair_wo_prefill (0.35) is above base (0.30) but not a baseline
    hits = {m: [LEVEL[("SASRec", m)] + JITTER[s % 4] for s in (100, 101, 102)] for m in ("genair", "genair_wo_prefill")}
    p = ttest_ind(hits["genair"], hits["genair_wo_prefill"]).pvalue
    assert hr[8] == (f"{p:.2e}" if p < 1e-3 else f"{p:.3f}")
    assert hr[9] == "1.000"            # same values as GenAIR: t = 0
    with open(tmp_path / "table2.csv", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    assert row["best_baseline"] == "base" and float(row["p_value_vs_genair_wo_prefill"]) == pytest.approx(p)


def test_processes_sharing_one_out_each_write_every_finished_column(fake, tmp_path):
    """One process per method (or seed) in one folder: the last to finish used to own
    table2.md with only its own columns."""
    grid(tmp_path, methods=["base"], seeds=1)
    grid(tmp_path, methods=["genair"], seeds=1, overrides={"seed": 101, "epochs": 5})
    header = next(line for line in (tmp_path / "table2.md").read_text().splitlines() if line.startswith("| Backbone"))
    assert header.split(" | ")[2:4] == ["genair", "base"]
    assert "2 seed(s) [100, 101]" in (tmp_path / "table2.md").read_text()
    assert not list(tmp_path.glob("*.tmp*"))


def test_a_record_after_a_cut_line_is_kept(tmp_path):
    store = ResultStore(tmp_path / "results.jsonl")
    store.path.write_text('{"dataset": "toy", "mod')          # killed mid-write
    record = {"dataset": "toy", "model": "SASRec", "method": "base", "seed": 1, "config_hash": "h"}
    store.append(record)
    assert list(store.load().values()) == [record]


@pytest.mark.parametrize("arg,hint", [("--method=genair", "use --methods="), ("--model=GRU4Rec", "use --models=")])
def test_singular_model_or_method_is_an_error_not_the_whole_default_grid(arg, hint, capsys):
    with pytest.raises(SystemExit):
        experiments.parse(["--dataset=toy", arg])
    assert hint in capsys.readouterr().err


def test_a_table_metric_recbole_did_not_compute_is_named(fake, tmp_path, capsys):
    grid(tmp_path, methods=["base"], seeds=1, metrics=["hit@10", "mrr@10"])
    assert "no finished cell has mrr@10 (RecBole computed hit@10, hit@5, ndcg@10)" in capsys.readouterr().err


def test_a_run_the_epoch_cap_stopped_while_it_improved_is_named_under_the_table(fake, fake_settings, tmp_path,
                                                                                monkeypatch):
    """GenAIR still rising at the cap vs a baseline that early stopping ended: the table says so."""
    curves = {"genair": [0.30, 0.32, 0.33, 0.34, 0.35],   # best at the last of 5 allowed epochs
              "llminit": [0.33, 0.36, 0.35, 0.34, 0.34],  # best at epoch 2, then patience ran out
              "base": [0.30, 0.31, 0.31]}                 # stopped early on a tie (the later one counts)

    def run(model, dataset, method, config_file_list=None, config_dict=None, saved=True, callback=None):
        result = fake(model, dataset, method, config_file_list, config_dict, saved, callback)
        return {**result, "valid_curve": curves[method], "epochs_run": len(curves[method])}

    monkeypatch.setattr(experiments, "run", run)
    monkeypatch.setattr(experiments, "cell_settings", lambda *a: {"epochs": 5, "data:toy.inter": "abc"})
    grid(tmp_path, seeds=1)
    lines = (tmp_path / "table2.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Stopped by the epoch cap"))
    assert lines[start + 2:] == ["- SASRec / genair / seed 100: valid 0.3500 at epoch 5 of 5",
                                 "- GRU4Rec / genair / seed 100: valid 0.3500 at epoch 5 of 5"]
    assert experiments.stopped_by_the_cap({"valid_curve": [0.3, 0.3], "epochs_run": 2, "settings": {"epochs": "2"}})
    assert not experiments.stopped_by_the_cap({"valid_curve": [0.3, 0.4], "epochs_run": 2, "settings": {}})
