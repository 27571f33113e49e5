"""The channel: transparent by default, partial upload, byte budget, lossy downlink, state."""

import io
import math

import lightning
import pytest
import torch

from fedgmi.algorithms.gmi import FedGMI
from fedgmi.data import ScenarioConfig, build_scenario
from fedgmi.errors import ConfigError
from fedgmi.federated.aggregation import aggregate_components
from fedgmi.federated.channel import Channel
from fedgmi.federated.compression import StochasticQuantization, TopK
from fedgmi.federated.evaluation import EvalConfig
from fedgmi.federated.messages import ClientReply, ClientTask, tensor_bytes
from fedgmi.federated.server import FederationConfig, run_federation
from fedgmi.federated.strategy import ProblemSpec
from fedgmi.models import ComponentVAE

P, K = 2_000, 3


def vec(seed):
    return torch.randn(P, generator=torch.Generator().manual_seed(seed))


def task(client=0, rnd=0, state=None):
    return ClientTask(rnd, client, seed=100 * rnd + client, global_state=tuple(state or [vec(k) for k in range(K)]))


def reply(client, weights, seed=0, n=None):
    updates = tuple(vec(seed + 10 * k) if w > 0 else None for k, w in enumerate(weights))
    return ClientReply(client, int(n or sum(weights)), torch.tensor(weights, dtype=torch.float32), updates)


def test_default_channel_passes_tasks_and_updates_through_exactly():
    channel, t = Channel(), task()
    assert channel.downlink([t]) == [t]
    r = reply(0, [50.0, 0.0, 30.0])
    out = channel.uplink(t, r)
    assert out.bytes_up == r.bytes_up == 2 * 4 * P + 4 * K
    for a, b in zip(out.updates, r.updates):
        assert (a is None and b is None) or torch.equal(a, b)
    assert channel.metrics()["compression_ratio_up"] == 1.0


def test_partial_upload_threshold_and_top_m_select_by_responsibility_mass():
    r = reply(0, [60.0, 10.0, 30.0])  # shares 0.6, 0.1, 0.3 of n = 100
    assert Channel(upload_threshold=0.2).select_components(r) == [0, 2]
    assert Channel(upload_top_m=1).select_components(r) == [0]
    assert Channel(upload_threshold=0.05, upload_top_m=2).select_components(r) == [0, 2]
    out = Channel(upload_threshold=0.2).uplink(task(), r)
    assert out.updates[1] is None and torch.equal(out.updates[2], r.updates[2])
    assert out.bytes_up == 2 * 4 * P + 4 * K


def test_partial_upload_aggregates_each_component_over_exactly_the_clients_that_sent_it():
    channel, t = Channel(upload_threshold=0.25), task()
    weights = [[70.0, 30.0, 0.0], [20.0, 50.0, 30.0], [10.0, 10.0, 80.0]]  # n = 100 each
    replies = [channel.uplink(t, reply(c, w, seed=c)) for c, w in enumerate(weights)]
    sent = [[u is not None for u in r.updates] for r in replies]
    assert sent == [[True, True, False], [False, True, True], [False, False, True]]
    new = aggregate_components(t.global_state, [r.updates for r in replies],
                               [r.aggregation_weights.tolist() for r in replies])
    for k in range(K):
        senders = [c for c in range(3) if sent[c][k]]
        total = sum(weights[c][k] for c in senders)
        expected = t.global_state[k] + sum(weights[c][k] / total * replies[c].updates[k] for c in senders)
        assert torch.allclose(new[k], expected, atol=1e-6), k


def test_budget_lowers_topk_to_fit_and_reports_when_it_cannot_be_met():
    codec = TopK(1.0, values=StochasticQuantization(8))
    channel, t = Channel(uplink=codec, uplink_budget_bytes=3_000), task()
    r = reply(0, [40.0, 30.0, 30.0])
    out = channel.uplink(t, r)
    assert all(u is not None for u in out.updates)
    assert 2_500 < out.bytes_up <= 3_000
    assert channel.metrics()["budget_unmet_clients"] == 0
    tight = Channel(uplink=codec, uplink_budget_bytes=4 * K + 10)  # k = 1 costs 7 bytes: one fits
    with pytest.warns(UserWarning, match="cannot be met"):
        out = tight.uplink(t, r)
    assert [u is not None for u in out.updates] == [True, False, False]  # the heaviest kept
    assert out.bytes_up <= 4 * K + 10
    nothing = Channel(uplink=StochasticQuantization(8), uplink_budget_bytes=100)  # no update fits
    with pytest.warns(UserWarning):
        out = nothing.uplink(t, r)
    assert all(u is None for u in out.updates) and out.bytes_up == 4 * K
    assert nothing.metrics()["budget_unmet_clients"] == 1


def test_lossy_downlink_keeps_an_exact_copy_of_what_each_client_holds():
    channel = Channel(downlink=StochasticQuantization(8))
    theta = [vec(k) for k in range(K)]
    first, other = channel.downlink([task(0, 0, theta), task(1, 0, theta)])
    assert first.bytes_down == K * StochasticQuantization(8).nbytes(P) < tensor_bytes(theta)
    for held, received, th in zip(channel.held[0], first.global_state, theta):
        assert torch.equal(held, received) and not torch.equal(received, th)
    errors = []
    for rnd in range(1, 6):  # client 0 sampled again and again with the same global state
        got = channel.downlink([task(0, rnd, theta)])[0].global_state
        errors.append(max(float((g - th).abs().max()) for g, th in zip(got, theta)))
    assert errors[-1] < errors[0] / 50  # the held copy converges to the server's
    # client 1 was not sampled after round 0: it still holds what it received then
    assert all(torch.equal(a, b) for a, b in zip(channel.held[1], other.global_state))
    assert channel.metrics()["compression_ratio_down"] == pytest.approx(4 * P / StochasticQuantization(8).nbytes(P))


def test_a_started_downlink_sends_a_first_contact_what_changed_since_round_0():
    initial = [vec(k) for k in range(K)]
    theta = [t + 0.01 * vec(10 + k) for k, t in enumerate(initial)]  # a little learned since round 0
    started, cold = Channel(downlink=StochasticQuantization(4)), Channel(downlink=StochasticQuantization(4))
    started.start(initial)
    lossless = Channel()
    lossless.start(initial)
    assert lossless.initial is None  # a lossless downlink keeps no copies
    got = started.downlink([task(0, 0, theta)])[0].global_state
    far = cold.downlink([task(0, 0, theta)])[0].global_state  # from zero: the whole model quantised
    error = max(float((g - t).abs().max()) for g, t in zip(got, theta))
    error_cold = max(float((g - t).abs().max()) for g, t in zip(far, theta))
    assert error < error_cold / 50  # 4 bits of the small change, not of the whole weights
    assert all(torch.equal(i, vec(k)) for k, i in enumerate(started.initial))  # its copy, not the caller's


def test_state_dict_round_trips_residuals_held_copies_and_counters():
    channel = Channel(uplink=TopK(0.05), downlink=StochasticQuantization(8))
    channel.start([vec(k) for k in range(K)])
    t = channel.downlink([task(3)])[0]
    channel.uplink(t, reply(3, [10.0, 20.0, 30.0]))
    buffer = io.BytesIO()
    torch.save(channel.state_dict(), buffer)
    buffer.seek(0)
    restored = Channel(uplink=TopK(0.05), downlink=StochasticQuantization(8))
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.counters == channel.counters
    for k in range(K):
        assert torch.equal(restored.residuals[3][k]["residual"], channel.residuals[3][k]["residual"])
        assert torch.equal(restored.held[3][k], channel.held[3][k])
        assert torch.equal(restored.initial[k], channel.initial[k])


@pytest.mark.parametrize("kwargs", [{"upload_threshold": 1.5}, {"upload_top_m": 0},
                                    {"uplink_budget_bytes": 0}, {"uplink_budget_bytes": 2.5}])
def test_bad_channel_settings_raise_one_line_config_errors(kwargs):
    with pytest.raises(ConfigError, match="channel"):
        Channel(**kwargs)


class PassThrough(Channel):
    """The loop as it was before the channel: tasks and replies untouched."""

    def downlink(self, tasks):
        return list(tasks)

    def uplink(self, task, reply):
        return reply


def _run(digits_base, channel):
    scenario = build_scenario(ScenarioConfig(dataset="digits", num_clients=4, samples_per_client=(80, 100), seed=1),
                              base=digits_base)
    strategy = FedGMI(component=lambda shape: ComponentVAE(shape, hidden_dims=(16,), latent_dim=3),
                      topic_clusters=8, topic_restarts=2, warmup_rounds=1, local_epochs=1)
    strategy.setup(ProblemSpec(scenario.image_shape, 3, scenario.num_classes, 4),
                   lightning.Fabric(accelerator="cpu", devices=1), seed=0)
    rows = []
    run_federation(strategy, scenario, FederationConfig(rounds=2, client_fraction=0.75, eval_every=1),
                   EvalConfig(num_samples=2), 0, lambda r, row, res: rows.append(row),
                   progress=False, channel=channel)
    return rows, strategy.global_state


def test_default_channel_leaves_a_run_exactly_as_it_was(digits_base):
    rows, state = _run(digits_base, Channel())
    before_rows, before_state = _run(digits_base, PassThrough())
    own = {"wall_time_s", *Channel().metrics()}  # the pass-through counts nothing of its own
    for row, before in zip(rows, before_rows):
        for key, value in before.items():
            if key not in own and not (isinstance(value, float) and math.isnan(value)):
                assert row[key] == value, key
        assert row["bytes_up_round"] > 0 and row["compression_ratio_up"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(state, before_state))


def test_channel_group_of_the_cli_builds_the_channel(tmp_path, capsys):
    from fedgmi.cli import build_parser, main

    extra = tmp_path / "comm.yaml"
    extra.write_text("channel:\n  uplink:\n    class_path: fedgmi.federated.compression.TopK\n"
                     "    init_args:\n      fraction: 0.05\n      values:\n"
                     "        class_path: fedgmi.federated.compression.StochasticQuantization\n"
                     "        init_args: {bits: 4}\n  upload_top_m: 2\n  uplink_budget_bytes: 100000\n")
    parser = build_parser()
    cfg = parser.parse_args(["fit", "--config", "configs/pm_digits.yaml", "--config", str(extra)])
    channel = parser._subcommands_action._name_parser_map["fit"].instantiate(cfg.fit).channel
    assert isinstance(channel.uplink_codec, TopK) and channel.uplink_codec.values.bits == 4
    assert channel.upload_top_m == 2 and channel.uplink_budget_bytes == 100_000
    assert channel.downlink_codec.lossless  # the default downlink: Identity
    assert main(["fit", "--config", "configs/pm_digits.yaml", "--channel.upload_threshold", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "upload_threshold" in err[0]
