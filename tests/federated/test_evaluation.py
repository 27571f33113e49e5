"""Evaluation on a closed-form mixture: two Gaussian components, known client proportions."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedgmi.data import ClientData
from fedgmi.errors import ConfigError
from fedgmi.federated.clients import InProcessClients, scenario_clients
from fedgmi.federated.evaluation import EvalConfig, evaluate
from fedgmi.federated.strategy import EvaluationHooks, Strategy

MEANS = torch.tensor([[-3.0, -3.0], [3.0, 3.0]])


class GaussianMixtureStrategy(Strategy, EvaluationHooks):
    """Components N(mu_k, I) in 2-D; component k predicts class k with probability 0.9."""

    def __init__(self):
        self.fabric = SimpleNamespace(device=torch.device("cpu"))
        self.client_state = {}

    @property
    def global_state(self):
        return (MEANS.flatten(),)

    def client_update(self, task, data, state):
        raise NotImplementedError

    def aggregate(self, round_idx, replies):
        raise NotImplementedError

    def component_outputs(self, x, estimator=None, num_samples=None, generator=None):
        log_px = torch.distributions.Normal(MEANS, 1.0).log_prob(x[:, None, :]).sum(-1)  # (N, K)
        class_lp = torch.full((len(x), 2, 2), math.log(0.1))
        class_lp[:, 0, 0] = class_lp[:, 1, 1] = math.log(0.9)
        return log_px, class_lp


def make_scenario(proportions, n=2000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    clients, z_train, z_test, true = [], [], [], []
    for c, pi in enumerate(proportions):
        parts = {}
        for part in ("train", "test"):
            z = torch.multinomial(torch.tensor(pi), n, replacement=True, generator=gen)
            parts[part] = (MEANS[z] + torch.randn(n, 2, generator=gen), z)
        clients.append(ClientData(c, parts["train"][0], parts["train"][1], parts["test"][0], parts["test"][1]))
        z_train.append(parts["train"][1])
        z_test.append(parts["test"][1])
        true.append(torch.bincount(parts["train"][1], minlength=2).double() / n)
    truth = SimpleNamespace(proportions=torch.stack(true), z_train=z_train, z_test=z_test)
    return SimpleNamespace(clients=clients, truth=truth, image_shape=(1, 1, 2))


def test_unseen_clients_recover_their_proportions_from_unlabelled_data():
    props = [[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.65, 0.35]]
    scenario = make_scenario(props)
    result = evaluate(GaussianMixtureStrategy(), scenario, EvalConfig(), unseen={2, 3})
    m = result.metrics
    assert m["assignment_accuracy"] > 0.99
    assert m["proportion_error_tv"] < 0.01
    assert m["unseen_proportion_error_tv"] < 0.01
    np.testing.assert_allclose(result.estimated_proportions[2:], scenario.truth.proportions[2:].numpy(), atol=0.01)
    # personalised prediction = class of the (almost surely known) component with prob 0.9
    assert m["client_accuracy_mean"] == pytest.approx(1.0)  # labels are the components here
    np.testing.assert_allclose(result.component_accuracy_matched, [[1.0, 0.0], [0.0, 1.0]])
    assert m["unseen_client_accuracy_mean"] == pytest.approx(1.0)
    nll = -torch.distributions.Normal(0.0, 1.0).log_prob(torch.randn(200000)).sum().item() / 100000
    assert m["test_nll"] == pytest.approx(nll, abs=0.05)  # 2-D standard normal entropy, nats


class GoneNodes(InProcessClients):
    """In-process clients of which ``gone`` cannot be reached, as a deployment's dead nodes."""

    def __init__(self, strategy, scenario, gone):
        super().__init__(strategy, scenario_clients(scenario), scenario)
        self.gone = set(gone)

    def _call(self, step, requests, shared, partial=False):
        if self.gone & set(requests) and not partial:
            raise RuntimeError(f"step {step!r}: clients {sorted(self.gone & set(requests))} not reached")
        return super()._call(step, {c: r for c, r in requests.items() if c not in self.gone}, shared, partial)


def test_clients_a_deployment_cannot_reach_are_left_out_and_counted():
    props = [[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.65, 0.35]]
    scenario, strategy = make_scenario(props), GaussianMixtureStrategy()
    gone = evaluate(strategy, GoneNodes(strategy, scenario, {1, 3}), EvalConfig(), unseen={2, 3})
    reached = evaluate(strategy, GoneNodes(strategy, scenario, ()).only([0, 2]), EvalConfig(), unseen={2})
    everyone = evaluate(strategy, scenario, EvalConfig(), unseen={2, 3})
    assert gone.metrics.pop("clients_unevaluated") == 2 and reached.metrics.pop("clients_unevaluated") == 0
    assert everyone.metrics["clients_unevaluated"] == 0
    assert gone.metrics == pytest.approx(reached.metrics, nan_ok=True)  # the same as scoring those who answered
    assert gone.metrics["proportion_error_tv"] != everyone.metrics["proportion_error_tv"]  # others left out
    assert np.isnan(gone.estimated_proportions[[1, 3]]).all()  # one row per client, NaN where not reached
    np.testing.assert_array_equal(gone.estimated_proportions[[0, 2]], reached.estimated_proportions)
    with pytest.raises(RuntimeError, match="none of the 4 clients could be reached"):
        evaluate(strategy, GoneNodes(strategy, scenario, {0, 1, 2, 3}), EvalConfig())


def test_generalization_is_each_clients_accuracy_on_the_pooled_test_parts_of_all_clients():
    from fedgmi.federated.evaluation import generalization_accuracy

    scenario = make_scenario([[0.95, 0.05], [0.2, 0.8]], n=500)
    share_of_class_0 = (torch.cat([c.y_test for c in scenario.clients]) == 0).double().mean().item()
    assert 0.5 < share_of_class_0 < 0.65
    pis = {0: torch.tensor([1.0, 0.0]), 1: torch.tensor([0.5, 0.5])}
    scores = generalization_accuracy(GaussianMixtureStrategy(), scenario, EvalConfig(), pis, torch.Generator())
    # client 0 trusts component 0 only: it always says class 0, right on exactly the pool's class-0
    # share; client 1 separates the two Gaussians (6 sqrt(2) apart) all but perfectly
    assert scores[0] == pytest.approx(share_of_class_0)
    assert scores[1] > 0.99


def test_generalization_metrics_appear_only_when_asked():
    scenario = make_scenario([[0.8, 0.2], [0.3, 0.7]], n=300)
    off = evaluate(GaussianMixtureStrategy(), scenario, EvalConfig()).metrics
    on = evaluate(GaussianMixtureStrategy(), scenario, EvalConfig(generalization=True)).metrics
    assert "generalization_accuracy_mean" not in off
    assert 0.99 < on["generalization_accuracy_mean"] <= 1.0 and on["generalization_accuracy_p10"] <= 1.0
    with pytest.raises(Exception, match="evaluation.generalization"):
        EvalConfig(generalization="yes")


class DuplicatedComponentStrategy(GaussianMixtureStrategy):
    """Three learned components on the two true ones: component 2 is a copy of component 1."""

    def component_outputs(self, x, estimator=None, num_samples=None, generator=None):
        log_px, class_lp = super().component_outputs(x)
        return log_px[:, [0, 1, 1]], class_lp[:, [0, 1, 1]]


def test_three_learned_components_on_two_true_ones_are_mapped_many_to_one():
    scenario = make_scenario([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]], n=1000)
    reference = evaluate(GaussianMixtureStrategy(), scenario, EvalConfig())
    result = evaluate(DuplicatedComponentStrategy(), scenario, EvalConfig())
    m = result.metrics
    # ties go to the first copy; the empty copy follows its proportions, which track true component 1
    assert result.mapping.tolist() == [0, 1, 1]
    assert m["num_components_learned"] == 3 and reference.metrics["num_components_learned"] == 2
    assert result.estimated_proportions.shape == (3, 3)
    np.testing.assert_allclose(result.estimated_proportions[:, 1], result.estimated_proportions[:, 2], atol=1e-6)
    np.testing.assert_allclose(result.proportions_by_true, reference.estimated_proportions, atol=1e-5)
    for key in ("assignment_accuracy", "proportion_error_tv", "client_accuracy_mean", "test_nll", "nmi",
                "component_accuracy_diag_min", "component_accuracy_offdiag_max"):
        assert m[key] == pytest.approx(reference.metrics[key], abs=1e-5), key
    assert result.component_accuracy.shape == (2, 3)
    np.testing.assert_allclose(result.component_accuracy_matched, [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])


def test_matched_nll_is_the_uniform_mixture_of_the_learned_components_mapped_to_each_true_one():
    from fedgmi.federated.evaluation import _matched_nll

    log_lik = np.log(np.array([[0.2, 0.6, 0.1], [0.4, 0.2, 0.3], [0.5, 0.1, 0.1]]))
    z = np.array([0, 0, 1])
    def nll_of(mapping):  # the server's division of the summed NLL by the counts
        total, count = _matched_nll(log_lik, z, mapping, 3)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    nll = nll_of(np.array([0, 0, 1]))
    assert nll[0] == pytest.approx(-np.mean(np.log([0.4, 0.3])))  # (0.2 + 0.6) / 2, (0.4 + 0.2) / 2
    assert nll[1] == pytest.approx(-np.log(0.1))
    assert math.isnan(nll[2])  # no learned component maps to true 2 (and it has no samples)
    one_to_one = nll_of(np.array([1, 0, 2]))
    assert one_to_one[0] == pytest.approx(-np.mean(np.log([0.6, 0.2])))  # learned 1 is matched to true 0


def test_which_strategies_report_the_label_informed_assignment():
    from fedgmi.algorithms import FedAvg, FedEM, FedGenGMM, FedGMI, Oracle

    assert FedGMI(estep="joint").evidence_uses_labels and not FedGMI().evidence_uses_labels
    assert FedEM().evidence_uses_labels
    assert not FedGenGMM().evidence_uses_labels and not Oracle().evidence_uses_labels
    assert "assignment_accuracy_label_informed" not in evaluate(
        GaussianMixtureStrategy(), make_scenario([[0.8, 0.2]], n=100), EvalConfig()).metrics
    from fedgmi.federated.evaluation import _label_informed

    assert not _label_informed(FedAvg())  # no mixture, no E-step


@pytest.fixture(scope="module")
def mnist_scenario(mnist_base):
    """4 clients of 60-80 real MNIST images, K_true = 3 rotations."""
    from fedgmi.data import ScenarioConfig, build_scenario

    return build_scenario(ScenarioConfig(dataset="mnist", num_clients=4, samples_per_client=(60, 80), seed=1),
                          base=mnist_base)


def trained_fedgmi(scenario, **kwargs):
    """A small FedGMI after one round of the real loop, and the loop's last evaluation."""
    import lightning

    from fedgmi.algorithms import FedGMI
    from fedgmi.federated.server import FederationConfig, LoopState, run_federation
    from fedgmi.federated.strategy import ProblemSpec
    from tests.helpers import small_component

    strategy = FedGMI(component=small_component, topic_clusters=12, topic_restarts=2, local_epochs=1,
                      warmup_rounds=1, **kwargs)
    strategy.setup(ProblemSpec.of(scenario, strategy), lightning.Fabric(accelerator="cpu", devices=1), seed=0)
    _, result = run_federation(strategy, scenario, FederationConfig(rounds=1, client_fraction=1.0, eval_every=1),
                               EvalConfig(num_samples=2, proportion_iters=5), seed=0, on_eval=lambda *a: None,
                               state=LoopState(), progress=False)
    return strategy, result


@pytest.mark.parametrize("learned", [4, 2])
def test_fedgmi_with_another_number_of_components_than_the_truth_is_scored(mnist_scenario, learned, tmp_path):
    import csv

    from rich.console import Console

    from fedgmi.outputs import RunDirectory, print_component_table

    _, result = trained_fedgmi(mnist_scenario, num_components=learned)
    m = result.metrics
    assert m["num_components_learned"] == learned
    for key in ("assignment_accuracy", "nmi", "proportion_error_tv", "proportion_error_max", "client_accuracy_mean",
                "component_accuracy_diag_min", "component_accuracy_offdiag_max", "test_nll", "test_nll_bits_per_dim"):
        assert math.isfinite(m[key]), key
    assert "assignment_accuracy_label_informed" not in m  # the label-free E-step
    assert result.mapping.shape == (learned,) and set(result.mapping.tolist()) <= {0, 1, 2}
    assert result.estimated_proportions.shape == (4, learned)
    assert result.component_accuracy.shape == result.component_accuracy_matched.shape == (3, learned)
    np.testing.assert_allclose(result.proportions_by_true.sum(1), 1.0, atol=1e-5)
    assert result.test_nll.shape == (3,)
    mapped = set(result.mapping.tolist())
    assert all(np.isfinite(result.test_nll[t]) == (t in mapped) for t in range(3))
    # the run files and the printed table carry the map
    run, names = RunDirectory(tmp_path), mnist_scenario.component_names
    run.write_proportions(result, mnist_scenario.truth.proportions.numpy(), names, set())
    run.write_component_accuracy(result, names)
    rows = list(csv.DictReader((tmp_path / "proportions.csv").open()))
    assert len(rows) == 4 * 3
    assert sorted(j for r in rows[:3] for j in r["learned_component"].split("+") if j) == [str(j) for j in range(learned)]
    np.testing.assert_allclose([float(r["estimated"]) for r in rows], result.proportions_by_true.ravel(), atol=1e-6)
    header = (tmp_path / "component_accuracy.csv").read_text().splitlines()[0]
    assert header.split(",")[2:-1] == [f"c{j}>p{t}" for j, t in enumerate(result.mapping)]
    console = Console(record=True, width=200)
    print_component_table(result, names, console)
    text = console.export_text()
    assert all(f"c{j}>p{t}" in text for j, t in enumerate(result.mapping))


def test_joint_fedgmis_assignment_is_from_x_alone(mnist_scenario):
    # a large label weight: log p_k(y | x) (a few nats) then competes with log p_k(x) (hundreds)
    strategy, _ = trained_fedgmi(mnist_scenario, estep="joint", label_weight=100.0)
    outputs = {}
    original = strategy.client_component_outputs

    def recording(cid, part, x, *args):
        outputs[cid, part] = original(cid, part, x, *args)
        return outputs[cid, part]

    strategy.client_component_outputs = recording
    result = evaluate(strategy, mnist_scenario, EvalConfig(num_samples=2, proportion_iters=5))
    x_only, with_labels, z = [], [], []
    for c, client in enumerate(mnist_scenario.clients):
        lp, clp = outputs[c, "test"]
        log_pi = torch.from_numpy(result.estimated_proportions[c]).float().log()
        x_only.append((log_pi + lp).argmax(1))
        with_labels.append((log_pi + strategy.evidence(lp, clp, client.y_test)).argmax(1))
        z.append(mnist_scenario.truth.z_test[c])
    x_only, with_labels, z = torch.cat(x_only), torch.cat(with_labels), torch.cat(z)
    mapping = torch.from_numpy(result.mapping)
    assert (x_only != with_labels).any()  # the labels change some assignments, so the check below can fail
    assert result.metrics["assignment_accuracy"] == pytest.approx((mapping[x_only] == z).double().mean().item())
    assert result.metrics["assignment_accuracy_label_informed"] == pytest.approx(
        (mapping[with_labels] == z).double().mean().item())


def test_proportions_and_test_samples_use_their_own_importance_samples():
    seen = []

    class Recording(GaussianMixtureStrategy):
        def component_outputs(self, x, estimator=None, num_samples=None, generator=None):
            seen.append((len(x), num_samples))
            return super().component_outputs(x, estimator, num_samples, generator)

    scenario = make_scenario([[0.8, 0.2]], n=50)
    evaluate(Recording(), scenario, EvalConfig(num_samples=32, proportion_samples=4))
    assert seen == [(50, 4), (50, 32)]  # training part (proportions), then test part
    seen.clear()
    evaluate(Recording(), scenario, EvalConfig(num_samples=32))
    assert seen == [(50, 32), (50, 32)]  # default: the same
    with pytest.raises(ConfigError, match="evaluation.proportion_samples"):
        EvalConfig(proportion_samples=0)
