"""Property-based check of bad input: generated configs with wrong types, out-of-range values
(optimizer hyperparameters included: negative, NaN, infinite), missing files, output folders
that cannot be created (under a file, under /proc), accelerators that are not there, fed to the
CLI's parser (``fedgmi validate``: parse, instantiate, build the scenario and the algorithm, read
the checkpoint) and to the scenario builder. Every one must end in success (exit 0, one stdout
line, stderr only warnings) or a one-line error with exit status 2; none in an uncaught
exception, and none may write anything (validate creates no folder and downloads nothing)."""

import contextlib
import io
import math
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedgmi.cli import main
from fedgmi.data import ScenarioConfig, build_scenario
from fedgmi.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "configs" / "pm_digits.yaml").read_text())
MISSING = str(ROOT / "no-such-folder" / "fedgmi")  # never created

ANY = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
    st.lists(st.integers(-5, 400), max_size=4), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
SMALL_INT = st.integers(-3, 40)
UNIT = st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 1.0, math.nan, math.inf]))
FIELDS = {  # dotted key -> values near and beyond the allowed range, mixed with anything
    "seed": SMALL_INT,
    "scenario.dataset": st.sampled_from(["digits", "mnist", "svhn", ""]),
    "scenario.data_dir": st.sampled_from([None, MISSING, "", str(ROOT / "pyproject.toml")]),
    "scenario.download": st.sampled_from([False, "yes"]),
    "scenario.angles": st.lists(st.one_of(st.floats(-720, 720), st.sampled_from([0.0, math.nan])), max_size=4),
    "scenario.num_clients": st.integers(-2, 200),
    "scenario.alpha": st.one_of(st.floats(-1, 5), st.sampled_from([0.0, math.inf])),
    "scenario.proportions": st.lists(st.lists(st.floats(-0.5, 1.5), min_size=2, max_size=4), max_size=3),
    "scenario.samples_per_client": st.lists(st.integers(-5, 3000), max_size=3),
    "scenario.test_fraction": UNIT,
    "federation.rounds": SMALL_INT,
    "federation.client_fraction": UNIT,
    "federation.eval_every": SMALL_INT,
    "federation.unseen_fraction": UNIT,
    "federation.dropout_probability": UNIT,
    "federation.max_update_norm_ratio": st.one_of(st.none(), st.floats(-1, 20)),
    "federation.min_clients": SMALL_INT,
    "federation.checkpoint_every": SMALL_INT,
    "evaluation.estimator": st.sampled_from(["iwae", "elbo", "exact"]),
    "evaluation.num_samples": SMALL_INT,
    "fabric.accelerator": st.sampled_from(["cpu", "auto", "tpu", "cuda", "gpu", "mps"]),
    "fabric.threads": st.one_of(st.none(), SMALL_INT),
    "scenario.seed": st.one_of(st.none(), SMALL_INT),
    "output_dir": st.sampled_from(["@tmp/new/run", str(ROOT / "pyproject.toml" / "run"), "/proc/fedgmi-x",
                                   "@tmp/config.yaml", None]),
    "fabric.precision": st.sampled_from(["32-true", "bf16-mixed", "8-bit"]),
    "fabric.devices": SMALL_INT,
    "logging.wandb_mode": st.sampled_from([None, "offline", "sometimes"]),
    "algorithm.class_path": st.sampled_from(["fedgmi.algorithms.gmi.FedGMI", "fedgmi.nope.Algo",
                                             "torch.nn.Linear"]),
    "algorithm.init_args.local_epochs": SMALL_INT,
    "algorithm.init_args.batch_size": SMALL_INT,
    "algorithm.init_args.estep": st.sampled_from(["label_free", "joint", "both"]),
    "algorithm.init_args.temperature": st.floats(-1, 3),
    "algorithm.init_args.head_min_responsibility": UNIT,
    "algorithm.init_args.component.init_args.latent_dim": SMALL_INT,
    "algorithm.init_args.component.init_args.hidden_dims": st.lists(SMALL_INT, max_size=3),
    "algorithm.init_args.optimizer.init_args.lr": st.one_of(st.floats(-1, 1),
                                                             st.sampled_from([math.nan, math.inf, -1.0, 0.0])),
    "algorithm.init_args.optimizer.init_args.betas": st.lists(st.one_of(st.floats(-0.5, 1.5), st.just(math.nan)), max_size=3),
    "algorithm.init_args.optimizer.init_args.eps": st.sampled_from([1e-8, -1.0, math.nan, 0.0]),
    "algorithm.init_args.optimizer.init_args.weight_decay": st.sampled_from([0.0, 0.1, -0.5, math.inf]),
}


def value_for(key):
    return st.one_of(FIELDS[key], FIELDS[key], ANY)  # mostly plausible, sometimes anything


CHANGES = st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3, unique=True).flatmap(
    lambda keys: st.tuples(*[st.tuples(st.just(k), value_for(k)) for k in keys]))


def apply(config: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        if not isinstance(node.get(name), dict):
            node[name] = {}
        node = node[name]
    node[leaf] = value


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=CHANGES, ckpt=st.sampled_from([None, MISSING, "garbage"]))
def test_generated_configs_end_in_success_or_one_line_error(changes, ckpt):
    config = yaml.safe_load(yaml.safe_dump(BASE))
    with tempfile.TemporaryDirectory() as tmp:
        for key, value in changes:
            apply(config, key, value.replace("@tmp", tmp) if isinstance(value, str) else value)
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        argv = ["validate", "--config", str(path)]
        if ckpt == "garbage":
            (Path(tmp) / "last.ckpt").write_bytes(b"\x80\x02not a checkpoint")
            argv += ["--ckpt_path", str(Path(tmp) / "last.ckpt")]
        elif ckpt:
            argv += ["--ckpt_path", ckpt]
        written_before = sorted(p.name for p in Path(tmp).iterdir())
        code, out, err = run_cli(argv)
        assert sorted(p.name for p in Path(tmp).iterdir()) == written_before  # validate writes nothing
    assert not Path(MISSING).exists()
    assert code in (0, 2), err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("fedgmi: error: "), err
    else:
        assert ckpt is None
        assert len(out.strip().splitlines()) == 1 and out.startswith("config OK"), out
        assert all(line.startswith("fedgmi: warning: ") for line in err.strip().splitlines()), err


def test_a_missing_config_file_is_one_line():
    code, _, err = run_cli(["validate", "--config", MISSING + ".yaml"])
    assert code == 2 and len(err.strip().splitlines()) == 1


SCENARIO_FIELDS = {k.split(".", 1)[1]: v for k, v in FIELDS.items() if k.startswith("scenario.")}


@settings(max_examples=200, deadline=None)
@given(kwargs=st.fixed_dictionaries({}, optional={k: st.one_of(v, ANY) for k, v in SCENARIO_FIELDS.items()}))
def test_scenario_builder_succeeds_or_raises_config_error(kwargs, digits_base):
    kwargs = {"dataset": "digits", **kwargs}
    try:
        config = ScenarioConfig(**kwargs)
        base = digits_base if config.dataset == "digits" else None
        build_scenario(config, base=base)
    except ConfigError as err:
        assert "\n" not in str(err)
