"""Fuzz the ``fedgmi`` command line as a careless or hostile user would (issue 25).

Hypothesis draws invocations of ``fit``, ``test``, ``validate`` and ``select_k``: wrong types,
out-of-range, NaN/inf and huge values, unknown keys and misspelled class paths, broken config
files (empty, a list, invalid YAML, a null section, binary junk, missing) and checkpoints
(truncated, junk, a folder, missing), hostile output folders (too long, under a file, /proc,
inside a run, a folder of the user's own files with and without ``--overwrite``, a folder
another run holds), a full disk (a file-size limit) and a few real tiny trainings. Each one runs
in this process through ``fedgmi.cli.main(argv)`` (a handful through ``python -m fedgmi``) in a
sandbox folder and must end with exit status 0 or 2, at most two lines on stderr, no
traceback, and no change to any file it does not own: the repository, the user's files, the
training files of a finished run and the folder another run holds.

    OMP_NUM_THREADS=1 FEDGMI_DATA_DIR=... python benchmarks/fuzz_cli.py --n 1000

prints one JSON object: N (invocations), tracebacks, bad_exit, long_stderr, files_changed, the
count by command and exit status, wall_s, and the first few failures in full.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
TINY = {"federation": {"rounds": 1, "eval_every": 1}, "scenario": {"num_clients": 4},
        "algorithm": {"init_args": {"local_epochs": 1, "warmup_rounds": 1, "topic_restarts": 1}}}
"""Overrides of configs/pm_digits.yaml that make a fit take seconds."""

HUGE = [10**20, 2**64, 2**32, -(2**63), 1e20, 1e308, -1e308]
NUMBERS = st.one_of(st.integers(-5, 50), st.sampled_from(HUGE), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["nan", "inf", "-inf", "1e20", "0x10", "", "seven", "[1, 2]", "{}", "null"]))
CLASS_PATHS = ["fedgmi.data.shifts.Rotatoin", "Rotatoin", "torch.optim.Adamm", "FedGMl", "no.such.Module",
               "os.system", "fedgmi.federated.compression.TopK", "builtins.dict", "", "..", "fedgmi"]
KEYS = {  # dotted key -> values near and beyond what is allowed
    "seed": NUMBERS, "scenario.seed": NUMBERS, "scenario.num_clients": NUMBERS, "scenario.alpha": NUMBERS,
    "scenario.test_fraction": NUMBERS, "scenario.angles": st.sampled_from(
        ["[0, 360.0000001]", "[0, 90, 90]", "[]", "[nan]", "[0, inf]", "[0, 1e300]", "5", "[0, 180]"]),
    "scenario.dataset": st.sampled_from(["digits", "mnist", "svhn", "", "../etc"]),
    "scenario.shift": st.sampled_from(CLASS_PATHS),
    "federation.rounds": NUMBERS, "federation.eval_every": NUMBERS, "federation.client_fraction": NUMBERS,
    "federation.max_update_norm_ratio": NUMBERS, "federation.checkpoint_every": NUMBERS,
    "federation.min_clients": NUMBERS, "evaluation.num_samples": NUMBERS,
    "algorithm": st.sampled_from(["FedGMI", "FedAvg", "PFedGM", "FedVTC", "IFCA", *CLASS_PATHS]),
    "algorithm.init_args.optimizer": st.sampled_from(CLASS_PATHS),
    "algorithm.init_args.num_components": NUMBERS, "algorithm.init_args.local_epochs": NUMBERS,
    "channel.uplink": st.sampled_from(
        [f'{{"class_path": "fedgmi.federated.compression.StochasticQuantization", "init_args": {{"bits": {b}}}}}'
         for b in (0, 1, 8, 33, "nan", '"x"')] + ["TopK", "null", "Quantize"]),
    "fabric.precision": st.sampled_from(["32-true", "16-mixed", "bf16-mixed", "8-bit", ""]),
    "fabric.accelerator": st.sampled_from(["cpu", "cuda", "tpu", "auto"]),
    "fabric.threads": NUMBERS, "logging.tensorboard": st.sampled_from(["true", "false", "maybe"]),
    "logging.wandb_mode": st.sampled_from(["offline", "disabled", "sometimes"]),
    "selection.k_max": NUMBERS, "no_such_key": NUMBERS, "federation.no_such_key": NUMBERS,
}
USER_FILES = {"logs/my_experiment.log": "mine", "plots/my_figure.png": "my figure", "notes.txt": "notes"}
"""The user's own files in the folder ``user/`` (fedgmi runs there too: they must survive)."""
CONFIGS = ["good", "good", "good", "good", "empty", "list", "invalid", "null", "binary", "missing", "scalar"]
CKPTS = ["last", "truncated", "junk", "folder", "missing", None, None]
OUTPUTS = ["new", "new", "user", "run", "nested", "locked", "long", "under_file", "proc", None]


@dataclass
class Sandbox:
    """A folder with the things a user may point the CLI at, and what must stay as it is."""

    root: Path
    paths: dict[str, Path] = field(default_factory=dict)
    protected: dict[str, tuple[int, int]] = field(default_factory=dict)
    lock_fd: int | None = None

    @classmethod
    def create(cls, root: Path) -> Sandbox:
        box = cls(root)
        base = yaml.safe_load((ROOT / "configs" / "pm_digits.yaml").read_text())
        for section, values in TINY.items():
            base.setdefault(section, {})
            _merge(base[section], values)
        contents = {"good": yaml.safe_dump(base), "empty": "", "list": "- 1\n- 2\n", "invalid": "scenario: [\n",
                    "null": "federation: null\n", "scalar": "7\n"}
        for name, text in contents.items():
            box.paths[name] = root / "configs" / f"{name}.yaml"
            box.paths[name].parent.mkdir(parents=True, exist_ok=True)
            box.paths[name].write_text(text)
        box.paths["binary"] = root / "configs" / "binary.yaml"
        box.paths["binary"].write_bytes(bytes(range(256)) * 4)
        box.paths["missing"] = root / "configs" / "missing.yaml"
        box.paths["run"] = root / "run"
        code, err = invoke(["fit", "--config", str(box.paths["good"]), "--output_dir", str(box.paths["run"])], root)
        if code != 0:
            raise RuntimeError(f"the sandbox's run failed: {err}")
        ckpts = root / "ckpts"
        ckpts.mkdir()
        last = box.paths["run"] / "checkpoints" / "last.ckpt"
        box.paths.update(last=last, truncated=ckpts / "truncated.ckpt", junk=ckpts / "junk.ckpt",
                         folder=box.paths["run"] / "checkpoints")
        box.paths["truncated"].write_bytes(last.read_bytes()[:5000])
        box.paths["junk"].write_bytes(b"not a checkpoint\n" * 100)
        box.paths["user"] = root / "user"
        for name, text in USER_FILES.items():
            (box.paths["user"] / name).parent.mkdir(parents=True, exist_ok=True)
            (box.paths["user"] / name).write_text(text)
        box.paths["locked"] = root / "locked"
        box.paths["locked"].mkdir()
        (box.paths["locked"] / "theirs.txt").write_text("another run's file")
        from fedgmi import run_folder
        box.lock_fd = run_folder.lock(box.paths["locked"])  # another run holds it (a second claim conflicts)
        box.paths["file"] = root / "a_file"
        box.paths["file"].write_text("a file, not a folder")
        box.protected = box.snapshot()
        return box

    def output(self, name: str | None, i: int) -> str | None:
        return {None: None, "new": str(self.root / "out" / f"o{i}"), "user": str(self.paths["user"]),
                "run": str(self.paths["run"]), "nested": str(self.paths["run"] / "checkpoints"),
                "locked": str(self.paths["locked"]), "long": str(self.root / "out" / ("x" * 300)),
                "under_file": str(self.paths["file"] / "run"), "proc": "/proc/fedgmi-fuzz"}[name]

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """(size, mtime) of every file that no invocation may change: the repository (no
        .git/.venv/caches), the sandbox's files but the invocations' own outputs, fedgmi's
        metadata (.fedgmi/), the test-* folders that ``fedgmi test`` adds to the run and the
        runs' outputs in the user's folder (the user's own files there are protected)."""
        found = {}
        for top in (ROOT, self.root):
            for folder, dirs, files in os.walk(top):
                rel = Path(folder).relative_to(top)
                dirs[:] = [d for d in dirs if not _owned(top == ROOT, rel / d)]
                for name in files:
                    p = Path(folder) / name
                    if top == self.root and rel.parts[:1] == ("user",) and \
                            str(p.relative_to(self.root / "user")) not in USER_FILES:
                        continue  # a run's outputs beside the user's files: fedgmi's to replace
                    with contextlib.suppress(OSError):
                        st_ = p.lstat()
                        found[str(p)] = (st_.st_size, st_.st_mtime_ns)
        return found

    def changed(self) -> list[str]:
        """Protected files changed or gone, and files that appeared where nothing may be written
        (anywhere but out/, runs/, the run's test-* folders, .fedgmi/ and the user's folder)."""
        now = self.snapshot()
        gone = [p for p, v in self.protected.items() if now.get(p) != v]
        new = [p for p in now if p not in self.protected and not _may_appear(Path(p), self)]
        return gone + new


def _owned(in_repo: bool, rel: Path) -> bool:
    """Folders left out of the snapshot: build/tool caches in the repository; in the sandbox,
    where invocations may write (out/, runs/, the run's test-* folders, .fedgmi metadata)."""
    name = rel.name
    if in_repo:
        return name in (".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "site",
                        "runs", "wandb") or name.endswith(".egg-info")
    return (rel.parts[0] in ("out", "runs") or name == ".fedgmi" or
            (len(rel.parts) == 2 and rel.parts[0] == "run" and name.startswith("test-")))


def _may_appear(path: Path, box: Sandbox) -> bool:
    """New files are fine in the user's folder (a run's outputs beside the user's own files)."""
    return box.paths["user"] in path.parents


def _merge(target: dict, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _merge(target.setdefault(key, {}), value)
        else:
            target[key] = value


def invoke(argv: list[str], cwd: Path, file_limit: int | None = None) -> tuple[int | str, str]:
    """``fedgmi.cli.main(argv)`` in ``cwd`` with stdout/stderr captured (and, with
    ``file_limit``, a file-size limit in bytes): (exit status, stderr). An exception that
    escapes main comes back as status ``"Traceback"`` with its text."""
    import traceback

    from fedgmi.cli import main

    err, old_cwd, old_limit = io.StringIO(), os.getcwd(), resource.getrlimit(resource.RLIMIT_FSIZE)
    os.chdir(cwd)
    try:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, old_limit[1]))
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exc:  # --help, --version
                code = exc.code if isinstance(exc.code, int) else 0
            except BaseException:  # noqa: BLE001 - what the fuzz is looking for
                return "Traceback", traceback.format_exc()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        os.chdir(old_cwd)
    return code, err.getvalue()


def invoke_process(argv: list[str], cwd: Path) -> tuple[int | str, str]:
    """The same through ``python -m fedgmi`` (import-time behaviour included)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    out = subprocess.run([sys.executable, "-m", "fedgmi", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    return out.returncode, out.stderr


@st.composite
def invocations(draw, box: Sandbox, train: bool = True) -> tuple[list[str], dict]:
    """(argv, how to run it): one drawn invocation of the CLI."""
    i = draw(st.integers(0, 10**9))
    command = draw(st.sampled_from(["fit", "validate", "validate", "test", "select_k"]))
    if draw(st.integers(0, 5)) == 0:  # a sane invocation, which runs (a fit, a test, a selection)
        return sane_invocation(draw, box, command, i, train)
    argv = [command]
    config = draw(st.sampled_from(CONFIGS))
    argv += ["--config", str(box.paths[config])]
    overrides = draw(st.dictionaries(st.sampled_from(sorted(KEYS)), st.none(), max_size=3))
    for key in overrides:
        value = draw(KEYS[key])
        argv += [f"--{key}", value if isinstance(value, str) else _text(value)]
    ckpt = draw(st.sampled_from(CKPTS)) if command != "select_k" else None
    output = box.output(draw(st.sampled_from(OUTPUTS)), i)
    if command == "fit" and ckpt == "last" and output in (None, str(box.paths["run"])):
        ckpt = None  # resuming the protected run (with more rounds) would be a change asked for
    if ckpt is not None:
        argv += ["--ckpt_path", str(box.paths.get(ckpt, box.root / "ckpts" / "missing.ckpt"))]
    if output is not None:
        argv += ["--output_dir", output]
    if command != "select_k" and draw(st.booleans()):
        argv.append("--overwrite")
    if command == "fit" and output == str(box.paths["run"]) and "--overwrite" in argv:
        argv.remove("--overwrite")  # replacing the protected run would be a change asked for
    return argv, {"file_limit": None}


def sane_invocation(draw, box: Sandbox, command: str, i: int, train: bool) -> tuple[list[str], dict]:
    """The good config into a new folder, the user's folder or the default one (``test``: of
    the finished run's checkpoint, also into the run with ``--overwrite``); a fit under a
    file-size limit of 100 kB (a full disk) one time in three. ``train`` False: ``validate``."""
    argv = [command if train else "validate", "--config", str(box.paths["good"])]
    if command == "select_k":
        argv += ["--selection.k_max", "2"]
    output = box.output(draw(st.sampled_from(["new", "new", "user", None] + (["run"] if command == "test" else []))), i)
    if command == "test":
        argv += ["--ckpt_path", str(box.paths["last"])]
    if output is not None:
        argv += ["--output_dir", output]
    if command != "select_k" and draw(st.booleans()) and (command == "test" or output != str(box.paths["run"])):
        argv.append("--overwrite")
    full = train and command == "fit" and draw(st.integers(0, 2)) == 0
    return argv, {"file_limit": 100_000 if full else None}


def _text(value) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return str(value)


@dataclass
class Tally:
    """What the fuzz found."""

    n: int = 0
    tracebacks: int = 0
    bad_exit: int = 0
    long_stderr: int = 0
    files_changed: int = 0
    by_outcome: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)

    def add(self, argv: list[str], code, stderr: str, changed: list[str], how: str = "") -> bool:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        problems = {"traceback": code == "Traceback" or "Traceback" in stderr, "bad_exit": code not in (0, 2),
                    "long_stderr": len(lines) > 2, "files_changed": bool(changed)}
        self.n += 1
        self.tracebacks += problems["traceback"]
        self.bad_exit += problems["bad_exit"]
        self.long_stderr += problems["long_stderr"]
        self.files_changed += problems["files_changed"]
        self.by_outcome[f"{argv[0]}{how} -> {code}"] += 1
        if any(problems.values()) and len(self.failures) < 10:
            self.failures.append({"argv": argv, "exit": code, "stderr": stderr[-2000:], "changed": changed[:5]})
        return not any(problems.values())

    def report(self, wall_s: float) -> dict:
        return {"N": self.n, "tracebacks": self.tracebacks, "bad_exit": self.bad_exit,
                "long_stderr": self.long_stderr, "files_changed": self.files_changed,
                "by_outcome": dict(sorted(self.by_outcome.items())), "wall_s": round(wall_s, 1),
                "failures": self.failures}


def run_fuzz(n: int, box: Sandbox, seed: int = 0, processes: int = 0, train: bool = True) -> Tally:
    """``n`` drawn invocations in process (the first ``processes`` of them also through
    ``python -m fedgmi``), each checked; returns the tally."""
    tally, done = Tally(), [0]

    @settings(max_examples=n, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(invocations(box, train))
    def one(drawn) -> None:
        argv, how = drawn
        through_process = done[0] < processes
        done[0] += 1
        code, stderr = invoke_process(argv, box.root) if through_process else \
            invoke(argv, box.root, how["file_limit"])
        changed = box.changed()
        tally.add(argv, code, stderr, changed,
                  " [python -m fedgmi]" if through_process else " [ulimit -f 100 kB]" if how["file_limit"] else "")
        if changed:  # report each change once
            box.protected = box.snapshot()

    hypothesis.seed(seed)(one)()
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="invocations (>= 1,000 for the issue's measure)")
    parser.add_argument("--processes", type=int, default=5, help="of them, run through python -m fedgmi")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedgmi-fuzz-") as tmp:
        box = Sandbox.create(Path(tmp))
        tally = run_fuzz(args.n, box, args.seed, args.processes)
    print(json.dumps(tally.report(time.perf_counter() - started), indent=2))


if __name__ == "__main__":
    main()
