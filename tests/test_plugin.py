"""Plugin mechanics: registry, config layering, data paths, the evaluation protocol."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.model.sequential_recommender import GRU4Rec, SASRec

from recbole_genair.config import Config
from recbole_genair.data.dataset import interaction_columns
from recbole_genair.quick_start import build_config, create_dataset, prepare, run
from recbole_genair.registry import UnknownChoiceError, get_model, model_class
from recbole_genair.trainer import best_checkpoint_path, fixed_negatives


def test_registry_base_is_recbole_and_unknown_names_list_choices():
    assert model_class("SASRec", "base") is SASRec
    assert model_class("GRU4Rec", "base") is GRU4Rec
    with pytest.raises(UnknownChoiceError, match="SASRec, GRU4Rec, BERT4Rec"):
        model_class("Caser", "base")
    with pytest.raises(UnknownChoiceError, match="base, genair"):
        model_class("SASRec", "nope")


def test_get_model_finds_plugin_first_then_recbole(monkeypatch):
    assert get_model("GenAIRSASRec").__name__ == "GenAIRSASRec"
    assert get_model("BPR").__name__ == "BPR"  # falls back to RecBole
    from recbole_genair import registry
    ours = type("BPR", (), {})
    monkeypatch.setattr(registry, "plugin_models", lambda: {"BPR": ours})
    assert get_model("BPR") is ours  # a plugin model shadows RecBole's of the same name
    with pytest.raises(UnknownChoiceError):
        get_model("NoSuchModel")


def test_a_recbole_pairwise_model_reached_through_the_fallback_trains(data_root):
    """This package's layer turns negative sampling off for CE; RecBole's BPR model still
    gets its sampled negatives (it raised KeyError 'neg_item_id')."""
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import BPR
    config = Config(model="BPR", dataset="ml-100k", config_dict={
        "data_path": str(data_root), "eval_negatives": 0, "show_progress": False, "state": "ERROR"})
    assert config["train_neg_sample_args"]["distribution"] == "uniform"
    train, _, _ = data_preparation(config, create_dataset(config))
    model = BPR(config, train._dataset)
    assert torch.isfinite(model.calculate_loss(next(iter(train))))
    sasrec = Config(model="SASRec", dataset="ml-100k", config_dict={"data_path": str(data_root)})
    assert sasrec["train_neg_sample_args"]["distribution"] == "none"    # CE: none


def test_config_layers_parent_defaults_plugin_yaml_and_overrides(data_root):
    genair = Config(model=model_class("BERT4Rec", "genair"), dataset="ml-100k",
                    config_dict={"data_path": str(data_root), "calibration_gamma": 3.0})
    assert genair["transform"] == "mask_itemseq"          # RecBole's BERT4Rec.yaml (parent)
    assert genair["hidden_size"] == 128                   # properties/model/BERT4Rec.yaml
    assert genair["calibration_t"] == 2.0                 # properties/method/genair.yaml
    assert genair["calibration_gamma"] == 3.0             # user override wins
    assert genair["valid_metric"] == "NDCG@10"            # properties/overall.yaml
    assert genair["eval_args"]["split"] == {"LS": "valid_and_test"}
    assert genair["backbone"] == "BERT4Rec" and genair["method"] == "genair"
    base = Config(model="SASRec", dataset="ml-100k", config_dict={"data_path": str(data_root)})
    assert base["n_layers"] == 2 and base["hidden_size"] == 128
    assert base["train_batch_size"] == 256  # properties/dataset/ml-100k.yaml over overall.yaml (128)
    assert base["data_path"] == str(data_root / "ml-100k")  # not RecBole's bundled copy


def test_bpr_loss_gets_training_negatives_and_trains(fast_config):
    ce = build_config("GRU4Rec", "ml-100k", "genair", config_dict=fast_config)
    assert ce["train_neg_sample_args"]["distribution"] == "none"  # CE: RecBole forbids negatives
    bpr = build_config("GRU4Rec", "ml-100k", "genair", config_dict=dict(fast_config, loss_type="BPR"))
    assert bpr["train_neg_sample_args"]["distribution"] == "uniform"
    assert bpr["train_neg_sample_args"]["sample_num"] == 1
    mine = {"distribution": "popularity", "sample_num": 2, "alpha": 1.0, "dynamic": False, "candidate_num": 0}
    explicit = build_config("GRU4Rec", "ml-100k", "genair",
                            config_dict=dict(fast_config, loss_type="BPR", train_neg_sample_args=mine))
    assert explicit["train_neg_sample_args"]["distribution"] == "popularity"
    # the BPR path (negative-item column, calibration on the same step) trains end to end
    result = run("GRU4Rec", "ml-100k", "genair", config_dict=dict(fast_config, loss_type="BPR", epochs=2))
    assert result["best_valid_result"]["ndcg@10"] > 0.08, result


def test_unknown_dataset_is_one_line_error(data_root, tmp_path):
    with pytest.raises(UnknownChoiceError, match="recbole_genair.datasets"):
        build_config("SASRec", "NoSuchData", "base")
    with pytest.raises(UnknownChoiceError, match=r"no NoSuchData.inter in .*NoSuchData \(data_path\)"):
        build_config("SASRec", "NoSuchData", "base", config_dict={"data_path": str(data_root)})
    # a known data set not prepared yet, looked for elsewhere (another folder's dataset/): the command
    with pytest.raises(UnknownChoiceError, match=r"no Yelp.inter in .*\(data_path\); prepare it with "
                                                 r"`python -m recbole_genair.datasets Yelp`"):
        build_config("SASRec", "Yelp", "base", config_dict={"data_path": str(tmp_path)})
    # data_path from a YAML file counts as much as from config_dict (it used to be refused)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "mine.inter").write_bytes((data_root / "ml-100k" / "ml-100k.inter").read_bytes())
    layer = tmp_path / "where.yaml"
    layer.write_text(f"data_path: {tmp_path}\n")
    assert build_config("SASRec", "mine", "base", config_file_list=[str(layer)])["data_path"] == str(tmp_path / "mine")


def test_runs_starting_together_never_leave_recbole_to_create_shared_directories(
        fast_config, tmp_path, monkeypatch):
    """RecBole checks, then creates ``./log/<model>`` and the checkpoint directory; a second
    run starting in between crashed with FileExistsError.  Our logger set-up creates both
    first, so RecBole only ever finds them."""
    import recbole.trainer.trainer
    import recbole.utils.logger
    from recbole_genair.compat import init_logger

    def racy_ensure_dir(path):  # the moment another process creates the same directory
        if not os.path.exists(path):
            os.makedirs(path)
            raise FileExistsError(path)
    monkeypatch.setattr(recbole.utils.logger, "ensure_dir", racy_ensure_dir)
    monkeypatch.setattr(recbole.trainer.trainer, "ensure_dir", racy_ensure_dir)
    monkeypatch.chdir(tmp_path)
    config = build_config("GRU4Rec", "ml-100k", "base",
                          config_dict={**fast_config, "checkpoint_dir": str(tmp_path / "shared" / "saved")})
    with pytest.raises(FileExistsError):
        recbole.utils.logger.init_logger(config)  # RecBole's own, as the crash happened
    (tmp_path / "log").rmdir()  # the one directory RecBole got to create before the crash
    init_logger(config)
    _, _, _, trainer = prepare(config)  # GenAIRTrainer: RecBole's Trainer checks its checkpoint_dir
    assert (tmp_path / "log" / "GRU4Rec").is_dir() and (tmp_path / "shared" / "saved").is_dir()


def test_sweep_options_without_tune_are_refused(capsys):
    import run_recbole_genair
    assert run_recbole_genair.main(["--model=SASRec", "--out=somewhere", "--num_samples=2"]) == 2
    assert "--num_samples, --out only work with --tune" in capsys.readouterr().err
    assert run_recbole_genair.main(["--model=SASRec", "--epochs", "5"]) == 2  # would train the default epochs
    assert "unrecognised argument(s) ['--epochs', '5']" in capsys.readouterr().err


def test_the_cli_passes_its_settings_and_the_python_api_reads_no_command_line(monkeypatch, fast_config):
    """RecBole's Config reads every --key=value of sys.argv, above config_dict; ours only when asked."""
    import run_recbole_genair
    from recbole_genair import quick_start
    monkeypatch.setattr(sys, "argv", ["some_script.py", "--epochs=99", "--seed=5", "--variants=a,b"])
    config = build_config("SASRec", "ml-100k", "base", config_dict=fast_config)
    assert config["epochs"] == fast_config["epochs"] != 99 and config["seed"] != 5
    assert "variants" not in config.final_config_dict
    recbole_style = Config(model="SASRec", dataset="ml-100k", config_dict=fast_config, command_line=True)
    assert recbole_style["epochs"] == 99 and recbole_style["seed"] == 5

    seen = {}
    monkeypatch.setattr(quick_start, "run", lambda **kwargs: seen.update(kwargs))
    assert run_recbole_genair.main(["--model=GRU4Rec", "--method=base", "--epochs=3", "--learning_rate=0.01",
                                    "--genair_features=['prefill']"]) == 0
    assert seen["model"] == "GRU4Rec" and seen["method"] == "base"
    assert seen["config_dict"] == {"epochs": 3, "learning_rate": 0.01, "genair_features": ["prefill"]}
    from recbole_genair import tune
    swept = {}
    monkeypatch.setattr(tune, "tune", lambda **kwargs: swept.update(kwargs))
    assert run_recbole_genair.main(["--tune", "--model=SASRec", "--num_samples=2", "--epochs=2"]) == 0
    assert swept["overrides"] == {"epochs": 2} and swept["num_samples"] == 2


def test_fixed_negatives_are_deterministic_unseen_and_shared(fast_config):
    config = build_config("SASRec", "ml-100k", "base", config_dict=fast_config)
    dataset, _, _, trainer = prepare(config)
    neg = fixed_negatives(dataset, 100, 42)
    again = fixed_negatives(dataset, 100, 42)
    assert torch.equal(neg, again)
    assert not torch.equal(neg, fixed_negatives(dataset, 100, 7))
    # every item of the user's, read before RecBole's build() turned rows into (history, target):
    # each user's first item is in no target row, and it once could be drawn (6 % of ml-100k users)
    unbuilt = create_dataset(config)
    users, items, _ = interaction_columns(unbuilt)
    for uid in range(1, dataset.user_num):
        row = neg[uid].numpy()
        assert len(np.unique(row)) == 100 and row.min() >= 1
        assert not np.isin(row, items[users == uid]).any(), uid
    assert torch.equal(trainer.eval_negatives.cpu(), neg)


def test_interaction_columns_of_a_built_sequential_data_set_are_the_whole_data_set(fast_config):
    config = build_config("SASRec", "ml-100k", "base", config_dict=fast_config)
    before = interaction_columns(create_dataset(config))
    built, *_ = prepare(config)
    after = interaction_columns(built)
    assert len(after[0]) == len(before[0]) == 18_860   # the test copy of ml-100k (conftest)
    # the same (user, item) pairs at the same times (RecBole keeps built times in float32)
    def in_order(users, items, times):
        order = np.lexsort((times, items, users))
        return users[order], items[order], times[order]
    (ub, ib, tb), (ua, ia, ta) = in_order(*before), in_order(*after)
    assert np.array_equal(ub, ua) and np.array_equal(ib, ia)
    assert np.allclose(tb, ta, rtol=1e-6, atol=0)


def test_sampled_evaluation_is_repeatable_and_ranks_101_candidates(fast_config):
    config = build_config("SASRec", "ml-100k", "base", config_dict=fast_config)
    _, (_, valid, test), model, trainer = prepare(config)
    first = trainer.evaluate(valid, load_best_model=False)
    second = trainer.evaluate(valid, load_best_model=False)
    assert first == second
    # with 100 negatives every user's target ranks within 101, so hit@20 <= 1 and the
    # untrained model is near the random ranker (hit@10 ~ 10/101)
    assert abs(first["hit@10"] - 10 / 101) < 0.06
    # exactly the 101 candidates compete: the held-out item and the user's fixed negatives
    interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(next(iter(valid)))
    users = interaction["user_id"]
    for row in range(0, len(users), 97):
        finite = set(torch.nonzero(torch.isfinite(scores[row])).flatten().tolist())
        target = set(positive_i[positive_u == row].tolist())
        assert len(target) == 1 and finite == target | set(trainer.eval_negatives[users[row]].tolist())
        assert len(finite) == 101
    trainer.set_negatives(None)  # full ranking over 1,682 items is much harder
    full = trainer.evaluate(valid, load_best_model=False)
    assert full["hit@10"] < first["hit@10"]


@pytest.mark.parametrize("backbone", ["SASRec", "GRU4Rec", "BERT4Rec"])
def test_each_backbone_beats_random_ranker(backbone, fast_config):
    with warnings.catch_warnings(record=True) as caught:  # the filters in force, not "always"
        result = run(backbone, "ml-100k", "base", config_dict=fast_config)
    # RecBole's known deprecation noise (compat.quiet_recbole_deprecations) stays out of the log
    noisy = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
             if issubclass(w.category, FutureWarning) and f"{os.sep}recbole{os.sep}" in w.filename]
    assert not noisy, noisy
    # random ranking among 101 candidates: HR@10 ~ 0.099, NDCG@10 ~ 0.045
    assert result["best_valid_result"]["ndcg@10"] > 0.12, result
    assert result["test_result"]["hit@10"] > 0.25, result


def _anomaly_flag_after(code: str) -> str:
    """``torch.is_anomaly_enabled()`` in a fresh interpreter after ``code``."""
    probe = f"import torch; {code}; print(torch.is_anomaly_enabled())"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()[-1]


def test_training_runs_without_recboles_import_time_anomaly_detection(fast_config, monkeypatch):
    # RecBole 1.2.1's SINE module switches autograd anomaly detection on for the process ...
    assert _anomaly_flag_after("import recbole.model.sequential_recommender") == "True"
    # ... this package's entry points switch it back, whichever was imported first ...
    assert _anomaly_flag_after("import recbole_genair.quick_start") == "False"
    assert _anomaly_flag_after("import recbole.model.sequential_recommender; import recbole_genair.model") == "False"
    # ... and keep a caller's own choice made before importing it
    assert _anomaly_flag_after("torch.autograd.set_detect_anomaly(True); import recbole_genair.model") == "True"
    seen = []
    original = GRU4Rec.calculate_loss

    def recording(self, interaction):
        seen.append(torch.is_anomaly_enabled())
        return original(self, interaction)

    monkeypatch.setattr(GRU4Rec, "calculate_loss", recording)
    run("GRU4Rec", "ml-100k", "base", config_dict=dict(fast_config, epochs=1))
    assert seen and not any(seen)


@pytest.mark.parametrize("backbone", ["GRU4Rec", "BERT4Rec"])
def test_interrupted_training_resumes_to_the_uninterrupted_result(backbone, fast_config, tmp_path):
    """Killed after epoch 1 of 2, then started again with the same progress_file: the same
    weights, valid curve and test result as a run that was never interrupted."""
    settings = dict(fast_config, epochs=2, stopping_step=10)
    whole = run(backbone, "ml-100k", "genair", config_dict=dict(settings, progress_file=str(tmp_path / "whole.pth")))
    progress = tmp_path / "cut.pth"
    epochs_seen = []

    def crash(epoch_idx, valid_score):
        epochs_seen.append(epoch_idx)
        if epoch_idx == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(backbone, "ml-100k", "genair", config_dict=dict(settings, progress_file=str(progress)), callback=crash)
    assert epochs_seen == [0] and progress.is_file() and not progress.with_name("cut.pth.partial").exists()
    best_file = Path(torch.load(progress, weights_only=False)["saved_model_file"])
    assert best_file == best_checkpoint_path(settings["checkpoint_dir"], progress)  # not "<model>-<time>"
    hidden = best_file.rename(best_file.with_suffix(".hidden"))       # the best checkpoint went missing
    with pytest.raises(FileNotFoundError, match="is gone; delete .*cut.pth to train from scratch"):
        run(backbone, "ml-100k", "genair", config_dict=dict(settings, progress_file=str(progress)))
    hidden.rename(best_file)
    with pytest.raises(ValueError, match=r"saved under other settings .*learning_rate: 0\.003 → 0\.1"):
        run(backbone, "ml-100k", "genair", config_dict=dict(settings, progress_file=str(progress), learning_rate=0.1))
    resumed_epochs = []
    resumed = run(backbone, "ml-100k", "genair", config_dict=dict(settings, progress_file=str(progress)),
                  callback=lambda epoch_idx, score: resumed_epochs.append(epoch_idx))
    assert resumed_epochs == [1]                                          # only the missing epoch ran
    assert resumed["valid_curve"] == whole["valid_curve"] and resumed["epochs_run"] == 2
    assert resumed["test_result"] == whole["test_result"]
    best = [torch.load(r["saved_model_file"], weights_only=False)["state_dict"] for r in (whole, resumed)]
    assert all(torch.equal(best[0][k], best[1][k]) for k in best[0])
    again_epochs = []                                                     # training had finished
    again = run(backbone, "ml-100k", "genair", config_dict=dict(settings, progress_file=str(progress)),
                callback=lambda epoch_idx, score: again_epochs.append(epoch_idx))
    assert again_epochs == [] and again["test_result"] == whole["test_result"]


def test_a_run_that_stopped_early_is_finished_on_resume(fast_config, tmp_path, monkeypatch):
    """Early stopping, not the epoch count, ended training: the same command again trains
    nothing and reports the same test result."""
    from recbole_genair.trainer import GenAIRTrainer
    real = GenAIRTrainer._valid_epoch
    scores = iter([0.5, 0.4, 0.3, 0.2, 0.1])

    def falling(self, valid_data, show_progress=False):   # every epoch after the first is worse
        _, result = real(self, valid_data, show_progress)
        score = next(scores)
        self.valid_curve[-1] = (self.valid_curve[-1][0], score)
        return score, result

    monkeypatch.setattr(GenAIRTrainer, "_valid_epoch", falling)
    settings = dict(fast_config, epochs=5, stopping_step=0, progress_file=str(tmp_path / "p.pth"))
    first = run("GRU4Rec", "ml-100k", "base", config_dict=settings)
    assert first["epochs_run"] == 2 and first["best_epoch"] == 0          # stopped after epoch 1
    again_epochs = []
    again = run("GRU4Rec", "ml-100k", "base", config_dict=settings,
                callback=lambda epoch_idx, score: again_epochs.append(epoch_idx))
    assert again_epochs == [] and again["test_result"] == first["test_result"]


def test_parallel_runs_in_one_checkpoint_dir_get_their_own_best_checkpoint(fast_config, tmp_path, monkeypatch):
    """Two seeds of one experiment started in the same second used to share RecBole's
    '<model>-<start time>.pth' and overwrite each other's best weights."""
    import recbole.trainer.trainer
    monkeypatch.setattr(recbole.trainer.trainer, "get_local_time", lambda: "Dec-04-2026_03-34-26")  # one second
    trainers = []
    for seed in (1, 2):
        config = build_config("SASRec", "ml-100k", "genair", config_dict=dict(
            fast_config, seed=seed, progress_file=str(tmp_path / "progress" / f"SASRec-seed{seed}.pth")))
        trainers.append(prepare(config)[-1])
    files = [Path(t.saved_model_file) for t in trainers]
    assert files[0] != files[1] and all(f.parent == Path(fast_config["checkpoint_dir"]) for f in files)
    plain = [build_config("SASRec", "ml-100k", "genair", config_dict=dict(fast_config, seed=1))] * 2
    names = {Path(prepare(c)[-1].saved_model_file).name for c in plain}   # without progress_file
    assert names == {f"GenAIRSASRec-Dec-04-2026_03-34-26-{os.getpid()}.pth"}, names
    # the same stem in another folder is another run; the same file is the same run
    assert best_checkpoint_path(tmp_path, tmp_path / "a" / "p.pth") != best_checkpoint_path(tmp_path, tmp_path / "b" / "p.pth")
    assert best_checkpoint_path(tmp_path, tmp_path / "a" / "p.pth") == best_checkpoint_path(tmp_path, tmp_path / "a" / ".." / "a" / "p.pth")


def test_ablations_are_genair_with_fixed_settings(fast_config, tmp_path):
    """Paper Table 3 as methods: GenAIR's model class; the ablated part fixed, not overridable."""
    from recbole_genair.registry import UsageError
    full = build_config("SASRec", "ml-100k", "genair", config_dict=fast_config)
    for method, key, value in [("genair_wo_prefill", "genair_features", ["decoding"]),
                               ("genair_wo_decoding", "genair_features", ["prefill"]),
                               ("genair_wo_calibration", "calibration_alpha", 0.0)]:
        config = build_config("SASRec", "ml-100k", method, config_dict=fast_config)
        assert config.model_class is model_class("SASRec", "genair") and config[key] == value != full[key]
        assert build_config("SASRec", "ml-100k", method, config_dict={**fast_config, key: value})[key] == value
        with pytest.raises(UsageError, match=f"method {method} fixes {key}"):
            build_config("SASRec", "ml-100k", method, config_dict={**fast_config, key: full[key]})
    layer = tmp_path / "mine.yaml"       # in a YAML layer too (config_dict would silently outrank it)
    layer.write_text("calibration_alpha: 0.01\n")
    with pytest.raises(UsageError, match="method genair_wo_calibration fixes calibration_alpha"):
        build_config("SASRec", "ml-100k", "genair_wo_calibration", config_file_list=[str(layer)], config_dict=fast_config)
    assert build_config("SASRec", "ml-100k", "genair", config_file_list=[str(layer)],
                        config_dict=fast_config)["calibration_alpha"] == 0.01
    _, _, model, _ = prepare(build_config("SASRec", "ml-100k", "genair_wo_decoding", config_dict=fast_config))
    _, _, whole, _ = prepare(full)
    assert 0 < model.item_embedding.features.shape[1] < whole.item_embedding.features.shape[1]


def test_an_ablation_clash_is_one_line_on_the_command_line(capsys):
    import run_recbole_genair
    assert run_recbole_genair.main(["--method=genair_wo_calibration", "--calibration_alpha=0.01"]) == 2
    assert "method genair_wo_calibration fixes calibration_alpha=0.0" in capsys.readouterr().err
