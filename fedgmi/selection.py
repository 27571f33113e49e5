"""Choosing K, the number of mixture components, by held-out federated likelihood.

K is a choice, not a given. ``fedgmi select_k`` (see :func:`run_selection`) trains the
strategy once for every K = 1..``selection.k_max`` and scores each on data no component saw:

1. Validation split (on each client, no data moves): every training client splits its
   training part into a fit part and a validation part (``selection.validation_fraction``,
   drawn from (run seed, client id), the same split for every K; :func:`validation_split`).
2. For each K: the strategy with ``num_components = K`` trains on the fit parts through the
   same round loop ``fit`` uses (:func:`~fedgmi.federated.server.run_round`, with the
   strategy's initialisation stage first), for ``federation.rounds`` rounds.
3. Held-out score (:func:`client_held_out_nll`): each training client re-estimates its
   proportions pi_c on its fit part with the strategy's E-step (as evaluation does:
   ``estimate_client_proportions`` from its stored proportions, ``evaluation.proportion_iters``
   iterations), then computes on its validation part the negative mixture log-likelihood
   -log sum_k pi_ck p_k(x), with p_k(x) the evaluation's estimator (``evaluation.estimator``,
   IWAE by default, ``evaluation.num_samples``), and uploads two scalars: the sum of nats and
   the count (and, as a diagnostic the rule does not use, two more: the sum of the personalised
   classifier's cross-entropy -log p_c(y | x) and its number of correct predictions).
4. The curve (:func:`pooled_score`): held-out NLL in nats per sample, pooled over the clients
   (sum of sums / sum of counts), with its standard error over clients; also in bits/dim.
5. The choice (:func:`choose_k`): the one-standard-error rule (Hastie, Tibshirani & Friedman,
   The Elements of Statistical Learning, 2nd ed., Sec. 7.10): the smallest K whose held-out
   NLL is at most the best NLL plus ``selection.se_multiplier`` (default 1) standard errors,
   so that a near-flat tail does not pick a larger K. The standard error
   (``selection.standard_error``) is by default the textbook one, that of the best K's score
   over clients ("client"); "paired" uses, for each K, the SE of its difference to the best K,
   paired by client.

Choices where the sources are silent (paper: FedGMI, arXiv 2605.08760, fixes K to the number
of inherent distributions; here):

- the held-out set is a fraction of each client's *training* part, not its test part (the
  test part stays for the final evaluation, as in cross-validation);
- the standard error treats clients as the independent units (a client's validation samples
  share its proportions): the ratio estimator's SE, sqrt(C/(C-1) sum_c (s_c - m n_c)^2) / N
  with s_c, n_c a client's sum and count, m = sum s / N, N = sum n (Cochran, Sampling
  Techniques, 3rd ed., Sec. 6.3); 0 with a single client;
- only training clients are scored (clients of ``federation.unseen_fraction`` never train and
  are left out); the validation part is passed to the strategy as part "train" (it is a piece
  of the client's training part);
- the standard evaluation (against the ground truth) is not run during the selection: the
  procedure sees no ground truth at all;
- the paired SE is an option, not the default: every K is scored on the same validation
  samples, so the spread between clients (about 1 nat per sample on ``pm_mnist``) cancels in
  the difference and the paired SE is much smaller (0.2-0.5 nats). The held-out NLL of a VAE
  mixture keeps falling a little past the true K (an extra component is a better density
  model), and the paired rule then follows it: on ``pm_mnist`` it chose 4 where the truth is 3
  and the client SE chose 3 (docs/guide/choosing-k.md).
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning
import numpy as np
import torch
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedgmi.atomic import write_atomic
from fedgmi.errors import ConfigError
from fedgmi.federated.channel import Channel
from fedgmi.federated.evaluation import EvalConfig
from fedgmi.federated.messages import tensor_bytes
from fedgmi.federated.server import FederationConfig, LoopState, initialisation_stage, run_round
from fedgmi.federated.strategy import ProblemSpec, Strategy
from fedgmi.metrics import nats_to_bits_per_dim
from fedgmi.models.personalized import mixture_predict
from fedgmi.outputs import RunDirectory, format_bytes
from fedgmi.plots import _new_figure, _save
from fedgmi.validation import check_choice, check_int, check_number

CRITERIA = ("nll", "cross_entropy")
"""Held-out scores the rule can read (:class:`SelectionConfig`)."""

STANDARD_ERRORS = ("paired", "client")
"""Standard errors the rule can use (:class:`SelectionConfig`)."""

SPLIT_SALT = 0x5E1EC7
"""Mixed into the validation split's seed so that it draws apart from every other use of the
run seed."""

SCORE_BYTES_UP = 4 * 8
"""Uplink bytes of one client's held-out score: four float64 scalars (:class:`ClientScore`)."""


@dataclass
class SelectionConfig:
    """Settings of ``fedgmi select_k``.

    Attributes:
        k_max: Largest K tried; the curve covers K = 1..k_max (>= 1).
        validation_fraction: Fraction of each training client's training part held out for
            the score, in (0, 1); every client keeps at least one sample on each side.
        se_multiplier: Tolerance of the rule in standard errors (>= 0; 1 = the
            one-standard-error rule, 0 = the best score).
        standard_error: Which standard error: "client" (default; the SE of the best K's own
            score over clients) or "paired" (for each K, the SE of its difference to the best
            K, per client, see :meth:`KResult.paired_difference`).
        criterion: The held-out score the rule reads: "nll" (-log sum_k pi_ck p_k(x), label-free)
            or "cross_entropy" (-log p_c(y | x) of the personalised prediction; it needs the
            validation labels, which training clients have).
    """

    k_max: int = 5
    validation_fraction: float = 0.2
    se_multiplier: float = 1.0
    criterion: str = "nll"
    standard_error: str = "client"

    def __post_init__(self) -> None:
        check_int("selection.k_max", self.k_max, 1)
        check_number("selection.validation_fraction", self.validation_fraction, 0, 1, low_open=True,
                     high_open=True)
        check_number("selection.se_multiplier", self.se_multiplier, 0)
        check_choice("selection.criterion", self.criterion, CRITERIA)
        check_choice("selection.standard_error", self.standard_error, STANDARD_ERRORS)


def check_selectable(strategy: Strategy) -> None:
    """Raise ConfigError (one line) unless ``strategy`` learns a mixture of pixel-space
    densities with a ``num_components`` setting and needs no ground truth."""
    name = type(strategy).__name__
    takes_k = "num_components" in inspect.signature(type(strategy).__init__).parameters
    if not (takes_k and strategy.models_mixture and strategy.pixel_density) or strategy.uses_ground_truth:
        raise ConfigError(f"algorithm = {name}: select_k needs a mixture of pixel-space densities with a "
                          "num_components setting and no ground truth (e.g. FedGMI)")


# --------------------------------------------------------------------------- the split
def validation_split(num_samples: int, fraction: float, seed: int, client_id: int) -> tuple[np.ndarray, np.ndarray]:
    """One client's (fit indices, validation indices) of its training part.

    The validation part has round(fraction * n) samples, at least 1 and at most n - 1, drawn
    without replacement from (seed, client id); both index arrays are sorted.

    Raises:
        ConfigError: the client has fewer than 2 training samples.
    """
    if num_samples < 2:
        raise ConfigError(f"selection.validation_fraction: client {client_id} has {num_samples} training "
                          "sample(s); a fit and a validation part need at least 2")
    count = min(max(1, round(fraction * num_samples)), num_samples - 1)
    perm = np.random.default_rng([int(seed), int(client_id), SPLIT_SALT]).permutation(num_samples)
    return np.sort(perm[count:]), np.sort(perm[:count])


@dataclass(frozen=True)
class ValidationPart:
    """A client's held-out samples: ``x`` (n_val, D) and ``y`` (n_val,)."""

    x: torch.Tensor
    y: torch.Tensor


def split_scenario(scenario, train_ids: Sequence[int], fraction: float, seed: int) -> tuple[object, dict[int, ValidationPart]]:
    """The scenario whose training clients hold only their fit parts, and the validation
    parts by client id. The ground truth is left as it was (the selection never reads it)."""
    clients, validation = list(scenario.clients), {}
    for cid in train_ids:
        client = clients[cid]
        fit, val = (torch.from_numpy(i) for i in validation_split(len(client.x_train), fraction, seed, cid))
        clients[cid] = dataclasses.replace(client, x_train=client.x_train[fit], y_train=client.y_train[fit])
        validation[cid] = ValidationPart(client.x_train[val], client.y_train[val])
    return dataclasses.replace(scenario, clients=clients), validation


# --------------------------------------------------------------------------- the score
@dataclass(frozen=True)
class ClientScore:
    """What one client uploads about its validation part.

    Attributes:
        nats: Sum over its samples of -log sum_k pi_ck p_k(x), nats (the score).
        count: Number of samples.
        cross_entropy: Sum of -log p_c(y | x) of its personalised classifier (DESIGN step 6),
            nats (a diagnostic).
        correct: Samples whose arg-max_y p_c(y | x) is their label (a diagnostic).
    """

    nats: float
    count: int
    cross_entropy: float
    correct: int


@torch.no_grad()
def client_held_out_nll(strategy: Strategy, client, part: ValidationPart, config: EvalConfig,
                        gen: torch.Generator) -> ClientScore:
    """One client's held-out score (:class:`ClientScore`): the sum over its validation samples
    of -log sum_k pi_ck p_k(x) in nats and their number, the two scalars of the score (plus the
    personalised classifier's cross-entropy and correct count).

    pi_c (K,) is re-estimated on the client's fit part (``client.x_train``) with the strategy's
    E-step, as :func:`fedgmi.federated.evaluation.evaluate` does for a training client;
    log p_k(x) (n, K) is the evaluation's estimate (``config.estimator``; ``num_samples`` on
    the validation part, ``proportion_samples`` on the fit part).
    """
    cid, settings = client.client_id, (config.estimator, config.num_samples, gen)
    lp, clp = strategy.client_component_outputs(cid, "train", client.x_train, *config.proportion_settings, gen)  # (n_fit, K), (n_fit, K, Y)
    evidence = strategy.evidence(lp, clp, client.y_train.to(lp.device))
    pi = strategy.estimate_client_proportions(evidence, strategy.client_proportions(cid), config.proportion_iters)
    lp_val, clp_val = strategy.client_component_outputs(cid, "train", part.x, *settings)  # (n_val, K), (n_val, K, Y)
    log_pi = pi.to(lp_val.device).log()
    log_mix = torch.logsumexp(log_pi + lp_val, dim=1)  # (n_val,) log p_c(x) in nats
    probs = mixture_predict(log_pi, lp_val, clp_val, strategy.density_weight)  # (n_val, Y) p_c(y | x)
    y = part.y.to(probs.device)
    picked = probs.gather(1, y[:, None]).squeeze(1).clamp_min(torch.finfo(probs.dtype).tiny)
    return ClientScore(float(-log_mix.double().sum()), len(part.x), float(-picked.double().log().sum()),
                       int((probs.argmax(1) == y).sum()))


def pooled_score(sums: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """(mean, standard error) in nats per sample of the clients' (C,) held-out sums and counts:
    mean = sum s / sum n; SE = the ratio estimator's, clients as units (module docstring), 0
    for one client."""
    sums, counts = np.asarray(sums, float), np.asarray(counts, float)
    total = counts.sum()
    mean = sums.sum() / total
    clients = len(sums)
    if clients < 2:
        return float(mean), 0.0
    spread = ((sums - mean * counts) ** 2).sum() * clients / (clients - 1)
    return float(mean), float(math.sqrt(spread) / total)


def choose_k(ks: Sequence[int], means: Sequence[float], ses: Sequence[float], se_multiplier: float = 1.0,
             paired: bool = False) -> int:
    """The one-standard-error rule (ESL Sec. 7.10): the smallest K with
    NLL(K) <= NLL(K_best) + se_multiplier * SE, K_best the K of the lowest held-out NLL.
    K with a non-finite score are left out.

    Args:
        ses: Per K, its score's SE (``paired=False``: SE = that of K_best) or the SE of its
            difference to K_best (``paired=True``: SE = K's own entry).

    Raises:
        ValueError: no K has a finite score.
    """
    scored = [(m, s, k) for k, m, s in zip(ks, means, ses) if math.isfinite(m) and math.isfinite(s)]
    if not scored:
        raise ValueError("no K has a finite held-out score")
    best_nll, best_se, _ = min(scored)
    return min(k for m, s, k in scored if m <= best_nll + se_multiplier * (s if paired else best_se))


# --------------------------------------------------------------------------- one K
@dataclass
class KResult:
    """The training and held-out score of one K.

    Attributes:
        k: Components learned.
        nll: Held-out NLL, nats per sample (pooled over clients).
        se: Its standard error over clients, nats.
        bits_per_dim: ``nll`` in bits per dimension.
        wall_s: Seconds of training and scoring.
        bytes_up: Uplink bytes of the training (initialisation included).
        bytes_down: Downlink bytes of the training.
        score_bytes_up: Uplink bytes of the score (four scalars per client).
        score_bytes_down: Downlink bytes of the score (the global state to every scored client).
        val_cross_entropy: Held-out cross-entropy of the personalised classifiers, nats per
            sample (the "cross_entropy" criterion).
        ce_se: Its standard error over clients, nats.
        val_accuracy: Their held-out accuracy (a diagnostic).
        client_scores: Client id -> its :class:`ClientScore`.
    """

    k: int
    nll: float
    se: float
    bits_per_dim: float
    wall_s: float
    bytes_up: int
    bytes_down: int
    score_bytes_up: int
    score_bytes_down: int
    val_cross_entropy: float = math.nan
    val_accuracy: float = math.nan
    ce_se: float = math.nan
    client_scores: dict[int, ClientScore] = field(default_factory=dict)

    def score(self, criterion: str = "nll") -> tuple[float, float]:
        """(mean, SE) of the held-out score the rule reads, nats per sample."""
        return (self.nll, self.se) if criterion == "nll" else (self.val_cross_entropy, self.ce_se)

    def row(self) -> dict:
        """The CSV row (every field but ``client_scores``)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "client_scores"}

    def paired_difference(self, other: KResult, criterion: str = "nll") -> tuple[float, float]:
        """(score(self) - score(other), its SE) in nats per sample, paired by client (both K
        are scored on the same validation parts): :func:`pooled_score` of the per-client
        differences of sums of the criterion's score (NLL or cross-entropy)."""
        field_name = "nats" if criterion == "nll" else "cross_entropy"
        ids = sorted(self.client_scores)
        diff = np.array([getattr(self.client_scores[c], field_name) - getattr(other.client_scores[c], field_name)
                         for c in ids])
        return pooled_score(diff, np.array([self.client_scores[c].count for c in ids]))


def train_federated(strategy: Strategy, scenario, federation: FederationConfig, seed: int, channel: Channel,
                    on_round: Callable[[int, dict], None], warn: Callable[[str], None]) -> LoopState:
    """The strategy's initialisation stage, then ``federation.rounds`` rounds of
    :func:`~fedgmi.federated.server.run_round` (what ``fit``'s loop runs, without its
    evaluations and checkpoints). ``on_round(rounds_done, row)`` gets each round's metrics and
    the cumulative bytes. Returns the loop state (bytes, failures)."""
    state = LoopState()
    train_ids, _ = federation.split_clients(len(scenario.clients))
    init = strategy.initialize([scenario.clients[c] for c in train_ids])
    strategy.client_state.update(init.client_states)
    state.bytes_up, state.bytes_down, state.init_exchanges = int(init.bytes_up), int(init.bytes_down), int(init.exchanges)
    for rnd in range(federation.rounds):
        metrics = run_round(strategy, scenario, federation, seed, rnd, train_ids, state, warn, channel)
        state.next_round = rnd + 1
        on_round(rnd + 1, {"round": rnd + 1, **metrics, "bytes_up": state.bytes_up, "bytes_down": state.bytes_down})
    return state


def score_k(strategy: Strategy, scenario, validation: dict[int, ValidationPart], config: EvalConfig,
            seed: int) -> tuple[dict[int, ClientScore], int]:
    """Every scored client's :class:`ClientScore` and the downlink bytes of the scoring."""
    gen = torch.Generator(strategy.fabric.device).manual_seed(seed)
    scores = {cid: client_held_out_nll(strategy, scenario.clients[cid], part, config, gen)
              for cid, part in validation.items()}
    return scores, tensor_bytes(strategy.global_state) * len(validation)


# --------------------------------------------------------------------------- the procedure
@dataclass
class Selection:
    """What :func:`run_selection` found: one :class:`KResult` per K, the chosen K, the rule."""

    results: list[KResult]
    chosen_k: int
    se_multiplier: float
    validation_fraction: float
    algorithm: str
    num_dims: int
    true_k: int | None = None
    criterion: str = "nll"
    standard_error: str = "client"

    @property
    def best(self) -> KResult:
        """The K of the lowest finite held-out score (the criterion's)."""
        return min(self.results, key=lambda r: r.score(self.criterion)[0]
                   if math.isfinite(r.score(self.criterion)[0]) else math.inf)

    @property
    def paired(self) -> bool:
        """Whether the rule reads each K's SE paired with the best K."""
        return self.standard_error == "paired"

    def paired_ses(self) -> list[float]:
        """Per K, the SE of its score's difference to the best K's, paired by client (nats)."""
        return [r.paired_difference(self.best, self.criterion)[1] for r in self.results]

    def thresholds(self) -> list[float]:
        """Per K, the largest score the rule accepts, nats per sample: best + multiplier x SE
        (the best's own SE, or K's difference to it paired by client)."""
        best_mean, best_se = self.best.score(self.criterion)
        ses = self.paired_ses() if self.paired else [best_se] * len(self.results)
        return [best_mean + self.se_multiplier * s for s in ses]

    def choose(self) -> Selection:
        """This selection with ``chosen_k`` set by :func:`choose_k` under its rule."""
        means, own_ses = zip(*(r.score(self.criterion) for r in self.results))
        ses = self.paired_ses() if self.paired else own_ses
        chosen = choose_k([r.k for r in self.results], means, ses, self.se_multiplier, self.paired)
        return dataclasses.replace(self, chosen_k=chosen)

    def rule(self) -> str:
        """The rule in words."""
        se = "of its difference to the best, paired by client" if self.paired else "of the best"
        return f"smallest K with held-out {self.criterion} <= best + {self.se_multiplier:g} SE ({se})"

    def to_json(self) -> dict:
        best = self.best
        return {"chosen_k": self.chosen_k, "best_k": best.k, "algorithm": self.algorithm,
                "criterion": self.criterion, "rule": self.rule(), "standard_error": self.standard_error,
                "se_multiplier": self.se_multiplier, "validation_fraction": self.validation_fraction,
                "scenario_k": self.true_k,
                "curve": [{**r.row(), **dict(zip(("nll_minus_best_paired", "se_paired"), r.paired_difference(best))),
                           "threshold": t,
                           "client_nll": {str(c): v.nats / v.count for c, v in r.client_scores.items()}}
                          for r, t in zip(self.results, self.thresholds())]}


#: Builds a new strategy with ``num_components = K`` (not yet set up) and a fresh channel, from
#: the run's config; it may write the K folder's config.yaml.
MakeRun = Callable[[int, Path], tuple[Strategy, Channel]]


def run_selection(make_run: MakeRun, scenario, federation: FederationConfig, evaluation: EvalConfig,
                  selection: SelectionConfig, seed: int, fabric, run_dir: Path, console: Console,
                  progress: bool = True) -> Selection:
    """Train and score every K = 1..``selection.k_max`` (module docstring), each in its own
    folder ``run_dir/k<K>`` (metrics.csv per round, held_out.csv per client, metrics.json),
    then write selection.json, selection.csv and selection.png into ``run_dir``.

    Args:
        make_run: ``(K, folder) -> (strategy, channel)``, see :data:`MakeRun`.
        fabric: The run's Fabric; every K's strategy is set up on it for the fit scenario,
            from the same random state (``seed``). Only global rank 0 writes files.
    """
    write = fabric.is_global_zero
    train_ids, _ = federation.split_clients(len(scenario.clients))
    fit_scenario, validation = split_scenario(scenario, train_ids, selection.validation_fraction, seed)
    dims = int(np.prod(scenario.image_shape))
    train_examples = sum(len(fit_scenario.clients[c].x_train) for c in train_ids)
    results, algorithm = [], ""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        def warn(message: str) -> None:
            bar.console.print(f"[yellow]fedgmi: warning: {message}", highlight=False)

        for k in range(1, selection.k_max + 1):
            folder = run_dir / f"k{k}"
            started = time.perf_counter()
            strategy, channel = make_run(k, folder)
            lightning.seed_everything(seed, verbose=False)  # every K starts from the same random state
            strategy.setup(ProblemSpec.of(fit_scenario, strategy, train_examples), fabric, seed)
            algorithm = type(strategy).__name__
            bar.console.print(f"[bold]K = {k}[/bold] (of 1..{selection.k_max}): training {algorithm} with {k} "
                              f"component(s) on the fit parts, {federation.rounds} rounds -> {folder}")
            out = RunDirectory(folder) if write else None
            task = bar.add_task(f"K = {k}: {initialisation_stage(strategy)}", total=federation.rounds)

            def on_round(done: int, row: dict, task=task, k=k, out=out) -> None:
                bar.update(task, completed=done, description=f"K = {k}: round {done}/{federation.rounds}")
                if out is not None:
                    out.append_metrics(row)

            state = train_federated(strategy, fit_scenario, federation, seed, channel, on_round, warn)
            bar.update(task, description=f"K = {k}: held-out score")
            scores, down = score_k(strategy, fit_scenario, validation, evaluation, seed)
            counts = np.array([v.count for v in scores.values()])
            nll, se = pooled_score(np.array([v.nats for v in scores.values()]), counts)
            ce, ce_se = pooled_score(np.array([v.cross_entropy for v in scores.values()]), counts)
            result = KResult(k, nll, se, nats_to_bits_per_dim(nll, dims), time.perf_counter() - started,
                             state.bytes_up, state.bytes_down, SCORE_BYTES_UP * len(scores), down, ce,
                             sum(v.correct for v in scores.values()) / counts.sum(), ce_se, scores)
            results.append(result)
            bar.update(task, description=f"K = {k}: done")
            bar.console.print(f"K = {k}: held-out NLL {nll:.2f} +- {se:.2f} nats/sample "
                              f"({result.bits_per_dim:.4f} bits/dim; personalised accuracy "
                              f"{result.val_accuracy:.3f}), {result.wall_s:.0f} s")
            if out is not None:  # a run stopped later keeps the curve so far
                _write_k(out.path, result, scores)
                write_curve_csv(run_dir / "selection.csv", results)
    found = Selection(results, 0, selection.se_multiplier, selection.validation_fraction, algorithm, dims,
                      getattr(scenario, "num_components", None), selection.criterion,
                      selection.standard_error).choose()
    if write:
        write_selection(run_dir, found)
    return found


# --------------------------------------------------------------------------- outputs
CSV_FIELDS = ("k", "nll", "se", "bits_per_dim", "wall_s", "bytes_up", "bytes_down", "score_bytes_up",
              "score_bytes_down", "val_cross_entropy", "val_accuracy", "ce_se")
"""Columns of selection.csv (nll, se, val_cross_entropy and ce_se in nats per sample)."""


def _write_k(folder: Path, result: KResult, scores: dict[int, ClientScore]) -> None:
    """A K folder's metrics.json (its row) and held_out.csv (client, count, sum and mean of
    nats, cross-entropy sum, correct)."""
    write_atomic(folder / "metrics.json", json.dumps(result.row(), indent=2))
    f = io.StringIO(newline="")
    writer = csv.writer(f)
    writer.writerow(["client", "count", "nats_sum", "nll", "cross_entropy_sum", "correct"])
    for cid, v in scores.items():
        writer.writerow([cid, v.count, f"{v.nats:.6f}", f"{v.nats / v.count:.6f}", f"{v.cross_entropy:.6f}",
                         v.correct])
    write_atomic(folder / "held_out.csv", f.getvalue())


def write_selection(run_dir: Path, found: Selection) -> dict[str, Path]:
    """selection.json, selection.csv and selection.png in ``run_dir``; returns their paths."""
    paths = {name: run_dir / f"selection.{name}" for name in ("json", "csv", "png")}
    write_atomic(paths["json"], json.dumps(found.to_json(), indent=2))
    write_curve_csv(paths["csv"], found.results)
    plot_selection(found, paths["png"])
    return paths


def write_curve_csv(path: Path, results: Sequence[KResult]) -> None:
    """selection.csv: one row per K (:data:`CSV_FIELDS`)."""
    f = io.StringIO(newline="")
    writer = csv.DictWriter(f, CSV_FIELDS)
    writer.writeheader()
    writer.writerows(r.row() for r in results)
    write_atomic(path, f.getvalue())


def plot_selection(found: Selection, path: Path) -> Path:
    """The criterion's held-out score (nats/sample; NLL also in bits/dim, right axis) against K
    with +-1 SE bars, the rule's threshold (dashed; per K when the SE is paired) and the chosen
    K (red)."""
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    ks = [r.k for r in found.results]
    name = "NLL" if found.criterion == "nll" else "cross-entropy of p_c(y | x)"
    means, ses = zip(*(r.score(found.criterion) for r in found.results))
    ax.errorbar(ks, means, yerr=ses, marker="o", capsize=4, label=f"held-out {name} +- 1 SE")
    label = f"best + {found.se_multiplier:g} SE" + (" (paired with the best)" if found.paired else "")
    ax.plot(ks, found.thresholds(), color="grey", linestyle="--", label=label)
    ax.plot([found.chosen_k], [means[ks.index(found.chosen_k)]], marker="*", markersize=16, color="red",
            linestyle="none", label=f"chosen K = {found.chosen_k}")
    ax.set_xticks(ks)
    ax.set_xlabel("K (components learned)")
    ax.set_ylabel(f"held-out {name} (nats per sample)")
    if found.criterion == "nll":
        per_bit = found.num_dims * math.log(2.0)  # nats per (bits/dim)
        ax.secondary_yaxis("right", functions=(lambda n: n / per_bit, lambda b: b * per_bit)).set_ylabel("bits/dim")
    ax.set_title(f"{found.algorithm}: choosing K (validation fraction {found.validation_fraction:g})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def print_selection(found: Selection, run_dir: Path, console: Console) -> None:
    """The curve as two tables that fit 80 columns (held-out scores by K; then the cost of
    each K: wall time and bytes), then the chosen K and where the outputs are."""
    scores = Table(title=f"select_k: held-out scores of {found.algorithm} (nats per sample)", box=box.SIMPLE_HEAD,
                   padding=(0, 1), pad_edge=False)
    for name in ("K", "NLL +- SE", "vs best (SE)", "bits/dim", "cross-ent. +- SE", "accuracy"):
        scores.add_column(name, justify="right", no_wrap=True)
    cost = Table(title="cost of each K", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for name in ("K", "wall time", "bytes up", "bytes down"):
        cost.add_column(name, justify="right", no_wrap=True)
    for r in found.results:
        k = f"{r.k}{' *' if r.k == found.chosen_k else ''}"
        diff, diff_se = r.paired_difference(found.best, found.criterion)
        scores.add_row(k, f"{r.nll:.2f} +- {r.se:.2f}", f"{diff:+.2f} ({diff_se:.2f})", f"{r.bits_per_dim:.4f}",
                       f"{r.val_cross_entropy:.3f} +- {r.ce_se:.3f}", f"{r.val_accuracy:.3f}")
        cost.add_row(k, f"{r.wall_s:.1f} s", format_bytes(r.bytes_up), format_bytes(r.bytes_down))
    console.print(scores)
    console.print(cost)
    console.print(f"chosen K = {found.chosen_k} (*; {found.rule()}; best K = {found.best.k})")
    console.print(f"outputs: {run_dir}")
