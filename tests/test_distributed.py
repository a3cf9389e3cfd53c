"""Training on several processes (RecBole's multi-GPU path; gloo CPU processes here)."""
from __future__ import annotations

import pytest
import torch

from recbole_genair.compat import load_checkpoint
from recbole_genair.distributed import free_port
from recbole_genair.experiments import parse as parse_experiments
from recbole_genair.quick_start import load_data_and_model, make_trainer, run
from recbole_genair.registry import UnknownChoiceError, UsageError
from run_recbole_genair import main as cli


def test_two_processes_train_one_model_and_evaluate_exactly_as_one_process(fast_config, tmp_path):
    progress = tmp_path / "progress.pth"
    settings = dict(fast_config, epochs=2, progress_file=str(progress))
    result = run("SASRec", "ml-100k", "genair", config_dict=settings, nproc=2, ip="127.0.0.1", port=free_port())

    # the gradients were all-reduced: both processes end with the same weights and optimizer
    first, second = load_checkpoint(progress), load_checkpoint(progress.with_name(progress.name + ".rank1"))
    assert first["epoch"] == second["epoch"] == 1
    assert first["state_dict"].keys() == second["state_dict"].keys()
    for key, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key]), key
    assert first["saved_model_file"] == second["saved_model_file"] == result["saved_model_file"]

    # the gathered metrics are the single-process metrics of the saved best model, exactly
    config, net, dataset, _train, valid_data, test_data = load_data_and_model(result["saved_model_file"])
    assert config["single_spec"] and "local_rank" not in config.final_config_dict
    trainer = make_trainer(config, net, dataset)
    assert dict(trainer.evaluate(test_data, load_best_model=False)) == result["test_result"]
    assert dict(trainer.evaluate(valid_data, load_best_model=False)) == result["best_valid_result"]
    assert result["test_result"]["ndcg@10"] > 0.1  # far above a random ranker over 101 candidates (~0.04)

    # a finished distributed run resumes from its progress files straight to the same test result
    again = run("SASRec", "ml-100k", "genair", config_dict=settings, nproc=2, ip="127.0.0.1", port=free_port())
    assert again["test_result"] == result["test_result"] and again["epochs_run"] == 2


def test_launch_mistakes_are_one_line_errors_before_any_process_starts(fast_config, capsys, monkeypatch):
    with pytest.raises(UsageError, match="--nproc=2"):  # a setting alone would train one process
        run("SASRec", "ml-100k", "genair", config_dict=dict(fast_config, nproc=2))
    with pytest.raises(UsageError, match="nproc must be >= 1"):  # not a silent single-process run
        run("SASRec", "ml-100k", "genair", config_dict=fast_config, nproc=0)
    with pytest.raises(UnknownChoiceError, match="no-such-data"):  # checked once, in the parent
        run("SASRec", "no-such-data", "genair", config_dict=fast_config, nproc=2)
    with monkeypatch.context() as cuda:  # one GPU id for two processes: RecBole would fail on a bare assert
        cuda.setattr(torch.cuda, "is_available", lambda: True)
        with pytest.raises(UsageError, match="--gpu_id=0,1"):
            run("SASRec", "ml-100k", "genair", config_dict=dict(fast_config, gpu_id="0"), nproc=2)
    assert cli(["--tune", "--nproc=2", "--model=SASRec", "--dataset=ml-100k"]) == 2
    assert "--nproc" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the Table-2 runner trains each cell in one process
        parse_experiments(["--dataset=ml-100k", "--nproc=2"])
    assert "run_recbole_genair.py --nproc" in capsys.readouterr().err
