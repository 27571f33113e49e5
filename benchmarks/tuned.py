"""Every method tuned with the same budget, then compared on seeds the tuning never saw.

    python benchmarks/tuned.py --kinds rotation --methods fedgmi fedgmi_joint fedavg local ifca \
        fedsoft fedem fedgmm fedgengmm pfedgm oracle --jobs 2 --out benchmarks/results/pm_mnist

The protocol (after pFL-Bench, Chen et al., NeurIPS 2022 Datasets and Benchmarks: the same
tuning budget for every method):

1. **The same grid for every method**: local epochs ``--epochs`` x learning rate ``--lrs``
   (Adam's ``lr``), one run per point on each validation seed. The local-epoch axis is each
   method's local epochs of its classifier: ``local_epochs`` for the peers, FedGMI's
   ``classifier_epochs`` (its key setting; its VAEs keep their config's ``local_epochs``, their
   compute is in the compute columns). Other settings stay at their configs' values for every
   method (FedSoft's mu, FedEM's K = the true K, as every mixture method gets): tuning a third
   axis for some methods would give them a larger budget than the rest.
2. **Validation data that is not the test data**: the grid runs on ``--validation_seeds``
   (other scenario draws: ``--seed`` and ``--scenario.seed`` both set to it), scored by their
   ``client_accuracy_mean``; the best point (ties: the cheaper one, fewer epochs first) is the
   method's setting. With ``--tune_on KIND`` the grid runs on that kind only and its choice
   serves every kind (each method keeps one setting across kinds; cheaper than a grid per kind,
   and still the same budget for every method).
3. **The reported runs**: every method at its chosen point on ``--seeds`` (default 0 1 2),
   mean ± std (ddof 1) over the seeds.

Every run is one ``fedgmi fit`` subprocess with OMP_NUM_THREADS=1 (``--jobs`` at a time), the
method's config plus the kind's scenario (the ``scenario`` section of ``configs/<kind config>``,
with ``scenario.angles: null`` where the kind sets ``scenario.shift``) plus ``--extra``
(default: 20% unseen clients, evaluation at the last round only). A run whose ``metrics.json``
exists under ``--runs_dir`` is not run again (so an interrupted benchmark resumes and the
tables of several invocations share runs). Each run's CPU seconds (user + system of its
process, ``os.wait4``: robust to other load on the machine, unlike wall time) and wall seconds
are kept beside its metrics.

Writes ``<out>.md`` (the command at the top; per kind: the chosen settings and the test
metrics of every method, bytes up and down, total bytes over FedAvg's, local compute as sample
passes per round, CPU and wall seconds per run; then every grid point's validation score) and
``<out>.csv`` (one row per kind and method). Prints a JSON summary. With ``--merge_into
PREFIX`` it writes no new table: the methods of this invocation replace their rows in the
earlier table PREFIX.md/.csv (after a change to one method, the others' rows need no rerun:
their code did not change), and the .md names the command that replaced them.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import summarise

KINDS = {  # kind -> the config whose scenario section it uses
    "rotation": "pm_mnist.yaml",
    "corruption": "pm_mnist_corruption.yaml",
    "class_skew": "pm_mnist_class_skew.yaml",
    "label_permutation": "pm_mnist_label_permutation.yaml",
    "rotation_permutation": "pm_mnist_rotation_permutation.yaml",
}
METHODS = {  # method -> its config
    "fedgmi": "pm_mnist.yaml", "fedgmi_joint": "pm_mnist_joint.yaml", "fedavg": "pm_mnist_fedavg.yaml",
    "local": "pm_mnist_local.yaml", "ifca": "pm_mnist_ifca.yaml", "fedsoft": "pm_mnist_fedsoft.yaml",
    "fedem": "pm_mnist_fedem.yaml", "fedgmm": "pm_mnist_fedgmm.yaml", "fedgengmm": "pm_mnist_fedgengmm.yaml",
    "pfedgm": "pm_mnist_pfedgm.yaml", "fedvtc": "pm_mnist_fedvtc.yaml", "oracle": "pm_mnist_oracle.yaml",
}
EPOCH_KEY = {"fedgmi": "classifier_epochs", "fedgmi_joint": "classifier_epochs"}
"""The local-epoch axis of the grid for each method (default ``local_epochs``)."""
SCORE = "client_accuracy_mean"
COLUMNS = ("client_accuracy_mean", "client_accuracy_p10", "unseen_client_accuracy_mean", "assignment_accuracy",
           "proportion_error_tv", "component_accuracy_diag_min", "component_accuracy_offdiag_max")
COST = ("bytes_up", "bytes_down", "train_sample_passes", "cpu_s", "wall_s")


def scenario_overlay(kind: str, folder: Path) -> Path:
    """A config file holding only the scenario section of the kind's config (written when its
    text changes, to a temporary name and renamed: runs started in parallel never read a
    half-written file)."""
    scenario = dict(yaml.safe_load((ROOT / "configs" / KINDS[kind]).read_text())["scenario"])
    if "shift" in scenario:
        scenario["angles"] = None  # the kind's shift replaces a method config's angles
    folder.mkdir(parents=True, exist_ok=True)
    path, text = folder / f"scenario-{kind}.yaml", yaml.safe_dump({"scenario": scenario}, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def point_args(method: str, epochs: int, lr: float) -> list[str]:
    """The fit arguments of one grid point."""
    key = EPOCH_KEY.get(method, "local_epochs")
    return [f"--algorithm.init_args.{key}", str(epochs), "--algorithm.init_args.optimizer.init_args.lr", str(lr)]


def run_fit(config: Path, overlay: Path, seed: int, out: Path, extra: list[str]) -> dict:
    """One ``fedgmi fit`` subprocess (skipped when ``out/metrics.json`` exists); returns its
    metrics with ``cpu_s`` and ``wall_s`` (kept in ``out/cost.json``)."""
    metrics, cost = out / "metrics.json", out / "cost.json"
    if not metrics.exists():
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "fedgmi", "fit", "--config", str(config), "--config", str(overlay),
               "--seed", str(seed), "--scenario.seed", str(seed), "--output_dir", str(out), "--overwrite", *extra]
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with (out / "stdout.log").open("w") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}; see {out / 'stdout.log'}")
        cost.write_text(json.dumps({"cpu_s": usage.ru_utime + usage.ru_stime,
                                    "wall_s": time.perf_counter() - started}) + "\n")
    return {**json.loads(metrics.read_text()), **(json.loads(cost.read_text()) if cost.exists() else {})}


def choose(scores: dict[tuple[int, float], float]) -> tuple[int, float]:
    """The grid point (epochs, lr) of the best validation score; ties: fewer epochs, then the
    smaller lr."""
    return max(scores, key=lambda p: (round(scores[p], 6), -p[0], -p[1]))


class Benchmark:
    """Runs and tables of one invocation (see the module docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.runs = args, ROOT / args.runs_dir
        self.extra = shlex.split(args.extra)

    def run(self, kind: str, method: str, point: tuple[int, float], seed: int) -> dict:
        folder = self.runs / kind / method / f"E{point[0]}-lr{point[1]:g}-seed{seed}"
        return run_fit(ROOT / "configs" / METHODS[method], scenario_overlay(kind, self.runs), seed, folder,
                       [*point_args(method, *point), *self.extra])

    def parallel(self, jobs: list[tuple]) -> list[dict]:
        started = time.perf_counter()

        def one(job: tuple) -> dict:
            result = self.run(*job)
            print(f"done {job} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
            return result

        with ThreadPoolExecutor(max(1, self.args.jobs)) as pool:
            return list(pool.map(one, jobs))

    def grid(self) -> list[tuple[int, float]]:
        return [(e, lr) for e in self.args.epochs for lr in self.args.lrs]

    def tuning_kind(self, kind: str) -> str:
        """The kind whose grid chooses ``kind``'s settings (itself, or ``--tune_on``)."""
        return self.args.tune_on or kind

    def tune(self) -> dict[tuple[str, str], dict]:
        """Validation runs of every grid point; returns per (kind, method) its scores and choice
        (and the kind they were tuned on)."""
        kinds = sorted({self.tuning_kind(k) for k in self.args.kinds}, key=list(KINDS).index)
        jobs = [(k, m, p, s) for k in kinds for m in self.args.methods for p in self.grid()
                for s in self.args.validation_seeds]
        results = dict(zip(jobs, self.parallel(jobs)))
        tuned = {}
        for kind in self.args.kinds:
            k = self.tuning_kind(kind)
            for m in self.args.methods:
                scores = {p: float(np.mean([results[(k, m, p, s)][SCORE] for s in self.args.validation_seeds]))
                          for p in self.grid()}
                tuned[(kind, m)] = {"scores": scores, "chosen": choose(scores), "tuned_on": k}
        return tuned

    def test(self, tuned: dict) -> dict[tuple[str, str], list[dict]]:
        jobs = [(k, m, tuned[(k, m)]["chosen"], s) for k in self.args.kinds for m in self.args.methods
                for s in self.args.seeds]
        results = self.parallel(jobs)
        out: dict[tuple[str, str], list[dict]] = {}
        for (k, m, _, _), metrics in zip(jobs, results):
            out.setdefault((k, m), []).append(metrics)
        return out


def fmt(mean: float, std: float, column: str) -> str:
    if math.isnan(mean):
        return "n/a"
    if column.startswith("bytes"):
        return f"{mean / 1e6:.1f}"
    if column in ("cpu_s", "wall_s"):
        return f"{mean:.0f}"
    return f"{mean:.3f} ± {std:.3f}"


def kind_rows(kind: str, methods: list[str], tuned: dict, tested: dict, rounds: int,
              fedavg_total: float | None = None) -> tuple[list[str], list[dict]]:
    """The markdown lines and CSV rows of one kind (``fedavg_total``: FedAvg's mean bytes up +
    down, when FedAvg is not among ``methods``)."""
    stats = {m: {c: summarise([r.get(c) for r in tested[(kind, m)]]) for c in COLUMNS + COST} for m in methods}
    base = stats.get("fedavg")
    if base is not None:
        fedavg_total = base["bytes_up"][0] + base["bytes_down"][0]
    head = ["method", "epochs", "lr", "val. acc.", *COLUMNS, "bytes up (MB)", "bytes down (MB)", "total / FedAvg",
            "sample passes / round (k)", "CPU s / run", "wall s / run"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    rows = []
    for m in methods:
        (e, lr), s = tuned[(kind, m)]["chosen"], stats[m]
        total = s["bytes_up"][0] + s["bytes_down"][0]
        ratio = total / fedavg_total if fedavg_total else float("nan")
        passes = s["train_sample_passes"][0] / rounds / 1e3
        cells = [m, str(e), f"{lr:g}", f"{tuned[(kind, m)]['scores'][(e, lr)]:.3f}",
                 *[fmt(*s[c], c) for c in COLUMNS], fmt(*s["bytes_up"], "bytes_up"),
                 fmt(*s["bytes_down"], "bytes_down"), "n/a" if math.isnan(ratio) else f"{ratio:.2f}x",
                 f"{passes:.1f}", fmt(*s["cpu_s"], "cpu_s"), fmt(*s["wall_s"], "wall_s")]
        lines.append("| " + " | ".join(cells) + " |")
        rows.append({"kind": kind, "method": m, "epochs": e, "lr": lr, "val_score": tuned[(kind, m)]["scores"][(e, lr)],
                     "total_bytes_over_fedavg": ratio, "sample_passes_per_round": passes * 1e3,
                     **{f"{c}_{q}": v for c in COLUMNS + COST for q, v in zip(("mean", "std"), s[c])}})
    return lines, rows


def grid_lines(kind: str, methods: list[str], tuned: dict, grid: list[tuple[int, float]]) -> list[str]:
    """Every grid point's validation score, a row per method (the chosen one in bold)."""
    head = ["method", *[f"E{e} lr{lr:g}" for e, lr in grid]]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for m in methods:
        t = tuned[(kind, m)]
        cells = [f"**{t['scores'][p]:.3f}**" if p == t["chosen"] else f"{t['scores'][p]:.3f}" for p in grid]
        lines.append("| " + " | ".join([m, *cells]) + " |")
    return lines


def versions() -> str:
    """The versions of Python and of the libraries the numbers depend on."""
    from importlib.metadata import version

    names = ("torch", "numpy", "scikit-learn", "lightning", "torchmetrics")
    return ", ".join([f"Python {sys.version.split()[0]}", *(f"{n} {version(n)}" for n in names)])


def write(bench: Benchmark, tuned: dict, tested: dict, command: str, notes: dict[str, list[str]]) -> list[dict]:
    args, out = bench.args, ROOT / bench.args.out
    rounds = int(tested[(args.kinds[0], args.methods[0])][0]["rounds"])
    lines = [f"# Tuned benchmark: {', '.join(args.kinds)}", "", "Made with:", "", f"    {command}", "",
             f"Libraries: {versions()} (results move by a few thousandths between torch versions).", "",
             (f"Protocol (benchmarks/tuned.py): every method gets the same grid, local epochs {args.epochs} x "
              f"Adam lr {args.lrs} (FedGMI: its classifier epochs), one run per point on validation seed(s) "
              f"{args.validation_seeds} (other scenario draws), scored by client_accuracy_mean; the best point "
              f"runs on seeds {args.seeds}: mean ± std over them. Extra fit arguments: `{args.extra}`. "
              "Bytes in MB (10^6), totals include initialisation; total / FedAvg = (up + down) over FedAvg's; "
              "sample passes / round: local training passes over samples, all models, all clients of a round "
              "(a VAE pass and a CNN pass cost differently: CPU s compares them); CPU s: user + system "
              "seconds of one run's process; n/a: the method has no mixture.")]
    rows = []
    for kind in args.kinds:
        table, kind_csv = kind_rows(kind, args.methods, tuned, tested, rounds)
        rows += kind_csv
        tuned_on = bench.tuning_kind(kind)
        grid = (["Validation scores of the grid (chosen in bold):", "", *grid_lines(kind, args.methods, tuned, bench.grid())]
                if tuned_on == kind else [f"Settings chosen on the {tuned_on} grid (above)."])
        lines += ["", f"## {kind}", "", *table, "", *grid, *(["", *notes[kind]] if kind in notes else [])]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    with out.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def merge(bench: Benchmark, tuned: dict, tested: dict, command: str) -> list[dict]:
    """Replace this invocation's methods' rows in the earlier table ``--merge_into`` (.md and
    .csv: the results line and the grid line of each kind, the CSV rows); every other row stays
    as it was, and the .md says which command replaced which rows. Total / FedAvg uses the
    table's FedAvg row when FedAvg is not rerun.

    Raises:
        SystemExit: the earlier table lacks a kind or method of this invocation (one line).
    """
    args = bench.args
    prefix = ROOT / args.merge_into
    old_rows = list(csv.DictReader(prefix.with_suffix(".csv").open()))
    lines = prefix.with_suffix(".md").read_text().splitlines()
    rounds = int(tested[(args.kinds[0], args.methods[0])][0]["rounds"])
    rows = []
    for kind in args.kinds:
        fedavg = [r for r in old_rows if r["kind"] == kind and r["method"] == "fedavg"]
        total = float(fedavg[0]["bytes_up_mean"]) + float(fedavg[0]["bytes_down_mean"]) if fedavg else None
        table, kind_csv = kind_rows(kind, args.methods, tuned, tested, rounds, total)
        rows += kind_csv
        grid = grid_lines(kind, args.methods, tuned, bench.grid()) if bench.tuning_kind(kind) == kind else []
        start = lines.index(f"## {kind}") if f"## {kind}" in lines else sys.exit(f"--merge_into: no kind {kind}")
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        for m_idx, m in enumerate(args.methods):
            found = [i for i in range(start, end) if lines[i].startswith(f"| {m} |")]
            if not found:
                sys.exit(f"--merge_into: no row of method {m} under kind {kind} in {prefix.with_suffix('.md')}")
            for i, new in zip(found, [table[2 + m_idx], *([grid[2 + m_idx]] if grid else [])]):
                lines[i] = new
    replaced = {(r["kind"], r["method"]): r for r in rows}
    merged = [replaced.pop((r["kind"], r["method"]), r) for r in old_rows]
    if replaced:
        sys.exit(f"--merge_into: {sorted(replaced)} have no row in {prefix.with_suffix('.csv')}")
    at = lines.index("Made with:") + 3
    lines[at:at] = ["", f"Rows of {', '.join(args.methods)} replaced by (the other rows as made above):", "",
                    f"    {command}"]
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")
    with prefix.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(old_rows[0]))
        writer.writeheader()
        writer.writerows({k: r.get(k) for k in old_rows[0]} for r in merged)
    return rows


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["rotation"], choices=list(KINDS))
    parser.add_argument("--methods", nargs="+", required=True, choices=list(METHODS))
    parser.add_argument("--epochs", nargs="+", type=int, default=[5, 15])
    parser.add_argument("--lrs", nargs="+", type=float, default=[0.001, 0.003])
    parser.add_argument("--validation_seeds", nargs="+", type=int, default=[100])
    parser.add_argument("--tune_on", choices=list(KINDS), default=None,
                        help="run the grid on this kind only; its choice serves every kind")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--extra", default="--federation.unseen_fraction 0.2 --federation.eval_every 30",
                        help="fit arguments for every run (one string)")
    parser.add_argument("--runs_dir", default="runs/tuned")
    parser.add_argument("--out", default="benchmarks/results/tuned")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each with one thread)")
    parser.add_argument("--merge_into", default=None,
                        help="an earlier table's prefix (.md, .csv): replace only this invocation's methods' "
                             "rows there (e.g. after a change to one method's config), instead of --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    command = "python benchmarks/tuned.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    bench = Benchmark(args)
    tuned = bench.tune()
    tested = bench.test(tuned)
    notes = {}
    if "label_permutation" in args.kinds:
        from shifts import label_permutation_bound

        bound = label_permutation_bound(scenario_overlay("label_permutation", bench.runs), 30, 0.2, args.seeds[0])
        notes["label_permutation"] = [(f"x-only bound on client accuracy (perfect classifiers, true proportions, "
                                       f"the majority component's label), seed {args.seeds[0]}: {bound:.3f}.")]
    rows = merge(bench, tuned, tested, command) if args.merge_into else write(bench, tuned, tested, command, notes)
    print(json.dumps(rows, indent=1, default=str))
    return rows


if __name__ == "__main__":
    main()
