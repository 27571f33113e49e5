"""FedGMI's client update and aggregation on real (digits) data."""

import math

import lightning
import pytest
import torch
from torch.nn.utils import parameters_to_vector

from fedgmi.algorithms.gmi import FedGMI
from fedgmi.errors import ConfigError
from fedgmi.models.features import MLPFeatures
from fedgmi.models.heads import MLPClassifier
from fedgmi.models.personalized import density_weight_scores, mixture_predict
from tests.helpers import digits_scenario, make_fedgmi, run_client


@pytest.fixture(scope="module")
def scenario(digits_base):
    return digits_scenario(digits_base)


make_strategy = make_fedgmi


@pytest.mark.parametrize("sharing", ["shared_body", "separate"])
def test_components_start_different_and_topic_init_gives_every_client_proportions(scenario, sharing):
    strategy = make_strategy(scenario, classifier_sharing=sharing)
    a, b, *rest = strategy.global_state
    assert len(rest) == (2 if sharing == "shared_body" else 1)  # the shared body is one more vector
    assert not torch.equal(a, b)
    for client in scenario.clients:
        pi = strategy.client_proportions(client.client_id)
        assert pi.shape == (3,) and pi.sum().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("sharing", ["shared_body", "separate"])
@pytest.mark.parametrize("phase_round", [0, 20])  # warm-up (topic) round and VAE round
def test_client_update_reply_is_deterministic_and_consistent(scenario, phase_round, sharing):
    strategy = make_strategy(scenario, min_mass=5.0, classifier_sharing=sharing)
    task = strategy.configure_round(phase_round, [2])[0]
    sent = [t.clone() for t in task.global_state]
    saved = {c: dict(s) for c, s in strategy.client_state.items()}
    reply = run_client(strategy, task, scenario.clients[2])
    strategy.client_state = saved  # the update moved the client's proportions; start again
    again = run_client(strategy, task, scenario.clients[2])
    n = len(scenario.clients[2].x_train)
    for before, theta in zip(sent, strategy.global_state):  # the server's copy is untouched
        assert torch.equal(before, theta)
    assert reply.num_examples == n
    assert reply.aggregation_weights[:3].sum().item() == pytest.approx(n, rel=1e-5)  # sum_k w_ck = n_c
    if sharing == "shared_body":  # the body's update has weight n_c
        assert reply.aggregation_weights[3].item() == n and reply.updates[3] is not None
    for w, u, u2, theta in zip(reply.aggregation_weights, reply.updates, again.updates, task.global_state):
        assert (u is None) == (w.item() < 5.0)
        if u is not None:
            assert u.shape == theta.shape and u.abs().max() > 0
            torch.testing.assert_close(u, u2)
    assert reply.bytes_up == sum(u.numel() * 4 for u in reply.updates if u is not None) + len(sent) * 4


def test_aggregating_one_client_moves_each_sent_component_to_its_parameters(scenario):
    strategy = make_strategy(scenario)
    task = strategy.configure_round(0, [0])[0]
    reply = run_client(strategy, task, scenario.clients[0])
    strategy.aggregate(0, [reply])
    for theta, u, new in zip(task.global_state, reply.updates, strategy.global_state):
        expected = theta if u is None else theta + u
        torch.testing.assert_close(new, expected)


def test_train_top_m_trains_only_the_heaviest_components(scenario):
    strategy = make_strategy(scenario, train_top_m=1)
    w = torch.tensor([3.0, 7.0, 7.0, 0.5])
    assert strategy.trained_components(w).tolist() == [False, True, False, False]  # ties: the lower k
    assert make_strategy(scenario, train_top_m=3, min_mass=1.0).trained_components(w).tolist() == \
        [True, True, True, False]  # min_mass still applies
    task = strategy.configure_round(20, [2])[0]  # a VAE round
    reply = run_client(strategy, task, scenario.clients[2])
    heaviest = int(reply.aggregation_weights[:3].argmax())
    assert [u is not None for u in reply.updates[:3]] == [k == heaviest for k in range(3)]
    assert reply.updates[3] is not None  # the shared body always trains


def test_head_epochs_train_the_heads_on_fixed_body_features(scenario):
    replies = {}
    for head_epochs in (0, 3):
        strategy = make_strategy(scenario, head_epochs=head_epochs)
        task = strategy.configure_round(20, [2])[0]
        replies[head_epochs] = run_client(strategy, task, scenario.clients[2])
    plain, more = replies[0], replies[3]
    torch.testing.assert_close(more.updates[3], plain.updates[3])  # the body: same training, same draws
    vae_size = strategy._vae_size
    for k in range(3):
        if plain.updates[k] is not None:  # the VAEs are the same, the heads moved further
            torch.testing.assert_close(more.updates[k][:vae_size], plain.updates[k][:vae_size])
            assert (more.updates[k][vae_size:] - plain.updates[k][vae_size:]).abs().max() > 1e-4


def test_local_training_lowers_the_weighted_negative_elbo(scenario):
    strategy = make_strategy(scenario, local_epochs=40)
    client = scenario.clients[1]
    task = strategy.configure_round(0, [1])[0]
    r = strategy.topic.log_likelihood_of(client.x_train).softmax(1)
    k = int(r.sum(0).argmax())
    before = strategy.load_vae(k, task.global_state).weighted_negative_elbo(client.x_train, r[:, k])
    reply = run_client(strategy, task, client)
    after_state = [t if u is None else t + u for t, u in zip(task.global_state, reply.updates)]
    after = strategy.load_vae(k, after_state).weighted_negative_elbo(client.x_train, r[:, k])
    assert after < before - 5.0, (before, after)
    assert parameters_to_vector(strategy.worker.module.vae.parameters()).numel() < task.global_state[k].numel()


@pytest.mark.parametrize("kw", [{"init": "kmeans"}, {"local_epochs": 0}, {"estimator": "exact"},
                                {"responsibility": "fuzzy"}, {"temperature": 0.0},
                                {"classifier_sharing": "both"}, {"head_loss": "focal"}, {"num_components": 0},
                                {"topic_iters": 0}, {"train_top_m": 0}, {"head_epochs": -1},
                                {"topic_lloyd_rounds": -1}, {"topic_min_group": 0}, {"density_weights": [1.0, -0.5]},
                                {"density_weights": [1.0, 1.0]}, {"density_weights": []},
                                {"calibration_fraction": 1.0}, {"calibrated_evidence": "yes"},
                                {"calibrated_evidence": True}])
def test_bad_options_are_one_line_config_errors(kw):
    with pytest.raises(ConfigError) as err:
        FedGMI(**kw)
    assert "\n" not in str(err.value) and str(next(iter(kw.values()))) in str(err.value)


@pytest.mark.parametrize("kw, key", [({"classifier": MLPClassifier}, "classifier"),
                                     ({"classifier_sharing": "separate", "body": MLPFeatures}, "body")])
def test_a_factory_the_layout_does_not_use_is_a_config_error(kw, key):
    with pytest.raises(ConfigError, match=f"init_args.{key} is set but classifier_sharing"):
        FedGMI(**kw)


def test_joint_and_label_free_evidence_in_a_closed_form_case():
    from fedgmi.federated.responsibilities import responsibilities

    log_px = torch.tensor([[-10.0, -11.0], [-5.0, -5.0]])  # (N=2, K=2)
    py = torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.99, 0.01]]])  # (N, K, Y)
    y = torch.tensor([1, 0])
    free = FedGMI(estep="label_free").evidence(log_px, py.log(), y)
    torch.testing.assert_close(free, log_px)
    joint = FedGMI(estep="joint").evidence(log_px, py.log(), y)
    torch.testing.assert_close(joint, log_px + torch.tensor([[0.1, 0.8], [0.5, 0.99]]).log())
    # posterior with pi = (0.5, 0.5): p(k | x, y) proportional to p_k(x) p_k(y | x)
    r = responsibilities(torch.tensor([0.5, 0.5]).log(), joint)
    a = torch.tensor([math.exp(-10) * 0.1, math.exp(-11) * 0.8])
    torch.testing.assert_close(r[0], a / a.sum())
    torch.testing.assert_close(r[1], torch.tensor([0.5, 0.99]) / 1.49)
    # the label weight scales log p_k(y | x)
    weighted = FedGMI(estep="joint", label_weight=3.0).evidence(log_px, py.log(), y)
    torch.testing.assert_close(weighted, log_px + 3 * torch.tensor([[0.1, 0.8], [0.5, 0.99]]).log())
    # calibrated: the chosen routing weight tau scales log p_k(x); tau = 0 leaves the labels alone
    calibrated = FedGMI(estep="joint", calibrated_evidence=True, density_weights=[0, 0.1, 1])
    for tau in (0.0, 0.1):
        calibrated.density_weight = tau
        torch.testing.assert_close(calibrated.evidence(log_px, py.log(), y),
                                   tau * log_px + torch.tensor([[0.1, 0.8], [0.5, 0.99]]).log())
    torch.testing.assert_close(calibrated.evidence(log_px, py.log(), None), log_px)  # x alone: unchanged


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("accelerator, precision", [
    ("cpu", "bf16-mixed"),
    pytest.param("cuda", "32-true", marks=needs_cuda),
    pytest.param("cuda", "bf16-mixed", marks=needs_cuda),
    pytest.param("cuda", "16-mixed", marks=needs_cuda),
])
def test_mixed_precision_round_keeps_likelihoods_proportions_and_updates_in_float32(
        scenario, accelerator, precision):
    reference = make_strategy(scenario)  # CPU, 32-true
    mixed = make_strategy(scenario, initialize=False,
                          fabric=lightning.Fabric(accelerator=accelerator, devices=1, precision=precision))
    mixed.load_state_dict(reference.state_dict())  # the same components, proportions and topic model
    device, x = mixed.fabric.device, scenario.clients[1].x_train
    log_ref, _ = reference.component_outputs(x, num_samples=16, generator=torch.Generator().manual_seed(0))
    log_mixed, class_lp = mixed.component_outputs(x, num_samples=16,
                                                  generator=torch.Generator(device).manual_seed(0))
    assert log_mixed.dtype == class_lp.dtype == torch.float32
    assert abs(log_mixed.mean().item() / log_ref.mean().item() - 1) < 0.02
    assert (log_mixed.argmax(1).cpu() == log_ref.argmax(1)).float().mean() > 0.9

    task = mixed.configure_round(20, [1])[0]  # a VAE round
    reply = run_client(mixed, task, scenario.clients[1])
    pi = mixed.client_proportions(1)
    assert pi.dtype == torch.float32 and pi.sum().item() == pytest.approx(1.0, abs=1e-5)
    sent = [u for u in reply.updates if u is not None]
    assert sent and all(u.dtype == torch.float32 and torch.isfinite(u).all() and u.abs().max() > 0 for u in sent)
    mixed.aggregate(20, [reply])
    assert all(t.dtype == torch.float32 and t.device.type == device.type and torch.isfinite(t).all()
               for t in mixed.global_state)


def test_density_weight_scores_are_the_labels_log_likelihood_under_each_routing():
    log_pi = torch.log(torch.tensor([0.8, 0.2]))
    log_px = torch.tensor([[0.0, 30.0]])  # a density error favouring component 1 by 30 nats
    class_lp = torch.log(torch.tensor([[[0.9, 0.1], [0.1, 0.9]]]))  # component 0 says class 0, 1 says 1
    y = torch.tensor([0])
    scores = density_weight_scores(log_pi, log_px, class_lp, y, [0.0, 1.0])
    # tau = 0: the proportions route, p(0) = 0.8 * 0.9 + 0.2 * 0.1; tau = 1: component 1 takes it all
    torch.testing.assert_close(scores, torch.tensor([math.log(0.74), math.log(0.1)], dtype=torch.float64),
                               atol=1e-5, rtol=0)
    probs = mixture_predict(log_pi, log_px, class_lp, 0.0)
    torch.testing.assert_close(probs, torch.tensor([[0.74, 0.26]]))


def test_a_client_scores_the_candidates_on_a_calibration_split_its_vaes_never_train_on(scenario, monkeypatch):
    strategy = make_strategy(scenario, density_weights=[0.0, 1.0], calibration_fraction=0.25, train_top_m=None,
                             min_mass=0.0)
    client = scenario.clients[1]
    held_out = strategy.calibration_mask(client.client_id, len(client.x_train))
    assert int(held_out.sum()) == round(0.25 * len(client.x_train))
    assert torch.equal(held_out, strategy.calibration_mask(client.client_id, len(client.x_train)))  # every round
    seen = []
    train = strategy.worker.train
    monkeypatch.setattr(strategy.worker, "train", lambda theta, x, y, w, *a, **k: (seen.append(w), train(
        theta, x, y, w, *a, **k))[1])
    warmup = run_client(strategy, strategy.configure_round(0, [1])[0], client)
    assert "density_weight_scores" not in warmup.statistics  # warm-up: the VAEs are not yet routing
    reply = run_client(strategy, strategy.configure_round(strategy.warmup_rounds, [1])[0], client)
    assert reply.statistics["density_weight_scores"].shape == (2,)
    assert all(float(w[held_out].abs().sum()) == 0.0 and float(w[~held_out].sum()) > 0 for w in seen)
    strategy.aggregate(strategy.warmup_rounds, [reply])
    assert strategy.density_weight == [0.0, 1.0][int(reply.statistics["density_weight_scores"].argmax())]
    assert strategy.round_settings(strategy.warmup_rounds)["density_weight"] == strategy.density_weight
    saved = {**strategy.state_dict(), "density_weight": 0.0}
    strategy.load_state_dict(saved)
    assert strategy.density_weight == 0.0  # a checkpoint restores the calibrated tau
    paper = make_strategy(scenario, density_weights=None)
    paper.load_state_dict(saved)
    assert paper.density_weight == 1.0  # without calibration: the paper's rule, whatever was saved
