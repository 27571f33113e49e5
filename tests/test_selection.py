"""Choosing K (fedgmi.selection): the one-standard-error rule on hand-made curves, the pooled
score and its standard error, the validation split, and the real ``fedgmi select_k`` command on
MNIST (files, a finite curve of k_max rows, bad input refused with one line and exit 2)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedgmi.cli import main
from fedgmi.selection import ClientScore, KResult, choose_k, pooled_score, validation_split

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the rule
def test_rule_flat_tail_picks_the_elbow():
    # K = 3 is the elbow; 4 and 5 are lower but within one SE of the best (5)
    assert choose_k([1, 2, 3, 4, 5], [300.0, 280.0, 250.0, 249.5, 249.0], [1.0] * 5) == 3


def test_rule_monotone_curve_picks_the_largest_when_gains_exceed_the_se():
    assert choose_k([1, 2, 3, 4], [300.0, 290.0, 280.0, 270.0], [1.0] * 4) == 4


def test_rule_minimum_inside_and_multiplier():
    ks, means = [1, 2, 3, 4], [300.0, 260.0, 255.0, 270.0]
    assert choose_k(ks, means, [1.0] * 4) == 3  # 260 > 255 + 1
    assert choose_k(ks, means, [1.0] * 4, se_multiplier=5.0) == 2  # 260 <= 255 + 5
    assert choose_k(ks, means, [1.0] * 4, se_multiplier=0.0) == 3  # the best


def test_rule_uses_the_se_of_the_best_and_skips_non_finite():
    # the best (K = 3) has SE 0: K = 2, with a wide SE of its own, is not within it
    assert choose_k([1, 2, 3], [300.0, 251.0, 250.0], [1.0, 50.0, 0.0]) == 3
    assert choose_k([1, 2, 3], [math.nan, 251.0, 250.0], [1.0, 1.0, 1.0]) == 2
    with pytest.raises(ValueError):
        choose_k([1, 2], [math.nan, math.inf], [1.0, 1.0])


def test_pooled_score_is_the_ratio_mean_with_client_se():
    sums, counts = np.array([100.0, 300.0, 250.0]), np.array([1, 2, 2])  # per-client means 100, 150, 125
    mean, se = pooled_score(sums, counts)
    assert mean == pytest.approx(650 / 5)
    # residuals s_c - mean * n_c: -30, 40, -10
    assert se == pytest.approx(math.sqrt((30**2 + 40**2 + 10**2) * 3 / 2) / 5)
    assert pooled_score(np.array([12.0]), np.array([3])) == (4.0, 0.0)  # one client: no spread
    assert pooled_score(np.array([10.0, 20.0]), np.array([1, 2]))[1] == 0.0  # equal means


def test_paired_difference_removes_the_spread_between_clients():
    def result(k, sums):
        return KResult(k, 0, 0, 0, 0, 0, 0, 0, 0, client_scores={c: ClientScore(s, 10, 0.0, 0)
                                                                  for c, s in enumerate(sums)})

    # clients differ a lot (SE of each K is large), but K = 2 is 5 nats/sample better on each
    three, two = result(3, [1000.0, 2000.0, 3000.0]), result(2, [1050.0, 2050.0, 3050.0])
    assert pooled_score(np.array([1050.0, 2050.0, 3050.0]), np.array([10] * 3))[1] > 20
    assert two.paired_difference(three) == pytest.approx((5.0, 0.0))
    assert three.paired_difference(three) == (0.0, 0.0)


# --------------------------------------------------------------------------- the split
@pytest.mark.parametrize("n, fraction, expected", [(100, 0.2, 20), (7, 0.5, 4), (2, 0.01, 1), (3, 0.99, 2)])
def test_split_is_disjoint_complete_and_honours_the_fraction(n, fraction, expected):
    fit, val = validation_split(n, fraction, seed=0, client_id=3)
    assert len(val) == expected and len(fit) == n - expected
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(n))


def test_split_is_deterministic_and_seeded():
    first = validation_split(200, 0.2, seed=5, client_id=1)
    again = validation_split(200, 0.2, seed=5, client_id=1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    other_client = validation_split(200, 0.2, seed=5, client_id=2)[1]
    other_seed = validation_split(200, 0.2, seed=6, client_id=1)[1]
    assert not np.array_equal(first[1], other_client) and not np.array_equal(first[1], other_seed)


def test_split_refuses_a_client_too_small():
    from fedgmi.errors import ConfigError
    with pytest.raises(ConfigError, match="validation_fraction"):
        validation_split(1, 0.2, seed=0, client_id=0)


# --------------------------------------------------------------------------- the command
SMALL = ["--config", str(ROOT / "configs" / "pm_mnist.yaml"), "--federation.rounds", "2",
         "--scenario.num_clients", "4", "--algorithm.init_args.local_epochs", "1",
         "--algorithm.init_args.warmup_rounds", "1", "--algorithm.init_args.topic_restarts", "2",
         "--fabric.accelerator", "cpu", "--logging.wandb", "false"]


@pytest.fixture
def data_env(mnist_data_dir, monkeypatch):
    monkeypatch.setenv("FEDGMI_DATA_DIR", str(mnist_data_dir))
    monkeypatch.setenv("WANDB_MODE", "offline")


def test_select_k_on_mnist_writes_a_finite_curve(data_env, tmp_path, capsys):
    out = tmp_path / "sel"
    assert main(["select_k", *SMALL, "--selection.k_max", "2", "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "K = 1" in printed and "K = 2" in printed and "chosen K =" in printed
    for name in ("config.yaml", "selection.json", "selection.csv", "selection.png"):
        assert (out / name).is_file(), name
    with (out / "selection.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["k"]) for r in rows] == [1, 2]
    for r in rows:
        for key in ("nll", "se", "bits_per_dim", "wall_s", "bytes_up", "bytes_down", "val_cross_entropy"):
            assert math.isfinite(float(r[key])), (key, r)
        assert float(r["nll"]) > 0 and float(r["bytes_up"]) > 0 and 0 <= float(r["val_accuracy"]) <= 1
    assert float(rows[1]["bytes_up"]) > float(rows[0]["bytes_up"])  # two components cost more uplink
    found = json.loads((out / "selection.json").read_text())
    assert found["chosen_k"] in (1, 2) and len(found["curve"]) == 2
    for k in (1, 2):
        folder = out / f"k{k}"
        assert (folder / "metrics.csv").is_file() and (folder / "held_out.csv").is_file()
        assert f"num_components: {k}" in (folder / "config.yaml").read_text()
        assert math.isfinite(found["curve"][k - 1]["se_paired"])
        clients = found["curve"][k - 1]["client_nll"]
        assert len(clients) == 4 and all(math.isfinite(v) for v in clients.values())
    # a run folder belongs to one run
    assert main(["select_k", *SMALL, "--selection.k_max", "1", "--output_dir", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("extra, key", [
    (["--selection.k_max", "0"], "selection.k_max"),
    (["--selection.validation_fraction", "0"], "selection.validation_fraction"),
    (["--algorithm", "FedAvg"], "algorithm = FedAvg"),
    (["--algorithm", "Oracle"], "algorithm = Oracle"),
])
def test_select_k_refuses_bad_input_with_one_line(data_env, tmp_path, capsys, extra, key):
    out = tmp_path / "bad"
    assert main(["select_k", *SMALL, *extra, "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert key in err and len(err.splitlines()) == 1, err
    assert not out.exists()  # refused before any folder is made


def test_the_cross_entropy_criterion_reads_the_classifier_curve_not_the_likelihood():
    from fedgmi.selection import Selection

    def result(k, nll, ce):  # NLL keeps falling with K; the cross-entropy bottoms out at K = 2
        return KResult(k, nll, 0.1, 0, 0, 0, 0, 0, 0, val_cross_entropy=ce, ce_se=0.01)

    results = [result(1, 10.0, 0.9), result(2, 9.0, 0.30), result(3, 8.0, 0.295)]
    by_nll = Selection(results, 0, 1.0, 0.2, "FedGMI", 784)
    by_ce = Selection(results, 0, 1.0, 0.2, "FedGMI", 784, criterion="cross_entropy")
    assert by_nll.best.k == 3 and by_ce.best.k == 3
    means, ses = zip(*(r.score("cross_entropy") for r in results))
    assert choose_k([1, 2, 3], means, ses) == 2  # 0.30 <= 0.295 + 0.01
    assert choose_k([1, 2, 3], *zip(*(r.score("nll") for r in results))) == 3


def test_an_unknown_criterion_is_a_config_error():
    from fedgmi.errors import ConfigError
    from fedgmi.selection import SelectionConfig

    with pytest.raises(ConfigError, match="selection.criterion"):
        SelectionConfig(criterion="aic")


def test_paired_rule_tells_apart_what_the_client_spread_hides():
    from fedgmi.selection import Selection

    def result(k, sums):
        return KResult(k, sum(sums) / 30, pooled_score(np.array(sums), np.array([10] * 3))[1], 0, 0, 0, 0, 0, 0,
                       client_scores={c: ClientScore(s, 10, 0.0, 0) for c, s in enumerate(sums)})

    # clients differ by ~100 nats/sample; K = 2 is 1 nat/sample worse than K = 3 on every client
    results = [result(1, [2000.0, 3000.0, 4000.0]), result(2, [1010.0, 2010.0, 3010.0]),
               result(3, [1000.0, 2000.0, 3000.0])]
    client = Selection(results, 0, 1.0, 0.2, "FedGMI", 784, standard_error="client").choose()
    paired = Selection(results, 0, 1.0, 0.2, "FedGMI", 784, standard_error="paired").choose()
    assert client.chosen_k == 2  # 1 nat is inside the client SE (~58)
    assert paired.chosen_k == 3  # and far outside the paired one (0)
    assert paired.thresholds() == pytest.approx([200.0, 200.0, 200.0])  # best 6000 / 30, SEs 0
    noisy = [result(2, [1012.0, 2010.0, 3008.0]), result(3, [1000.0, 2000.0, 3000.0])]  # diffs 1.2, 1.0, 0.8
    assert Selection(noisy, 0, 1.0, 0.2, "FedGMI", 784, standard_error="paired").choose().chosen_k == 3
    assert Selection(noisy, 0, 20.0, 0.2, "FedGMI", 784, standard_error="paired").choose().chosen_k == 2
    assert "paired" in paired.rule() and paired.to_json()["standard_error"] == "paired"
    from fedgmi.selection import SelectionConfig
    assert SelectionConfig().standard_error == "client"  # the textbook rule stays the default (docs/guide/choosing-k.md)
