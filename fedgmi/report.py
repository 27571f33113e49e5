"""The plots of a finished evaluation, written to ``<run>/plots/`` (see :mod:`fedgmi.plots`)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from fedgmi import plots
from fedgmi.metrics import learned_order, matched_column_names

CURVE_KEYS = ("assignment_accuracy", "proportion_error_tv", "client_accuracy_mean", "nmi")


@torch.no_grad()
def write_plots(run_dir: Path, strategy, scenario, result, num_images: int = 8, seed: int = 0,
                rounds: int | None = None, info=None) -> dict[str, Path]:
    """Write the run's PNGs and return them by name.

    proportions (estimated vs true, per client and component; only for a strategy that models
    a mixture: for the others the summary's mixture metrics say "n/a"), samples (a row of draws from
    each component VAE, in true-distribution order; VAE strategies only), reconstructions (test images of each
    inherent distribution and their reconstruction by its matched component), curves (metrics
    over rounds, from metrics.csv, a tick for each of the ``rounds``), accuracy_vs_bytes (assignment_accuracy and
    proportion_error_tv against cumulative uplink bytes) and component_accuracy (the matched table as a heatmap).
    ``info`` (:class:`fedgmi.run.FederationInfo`) gives the names and the truth when there is no
    ``scenario`` (a Flower server: then no image plots, it holds no test image).
    """
    out = run_dir / "plots"
    names = scenario.component_names if scenario is not None else info.component_names
    truth = scenario.truth.proportions.numpy() if scenario is not None else info.true_proportions
    learned = learned_order(result.mapping)  # learned j by true component (one-to-one: true t -> learned j)
    columns = matched_column_names(result.mapping)  # "c{t}" one-to-one, "c{j}>p{t}" many-to-one
    rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader((run_dir / "metrics.csv").open())]
    gen = torch.Generator(strategy.fabric.device).manual_seed(seed)
    written = {
        "curves": plots.plot_metric_curves(rows, CURVE_KEYS, out / "curves.png", rounds),
        "accuracy_vs_bytes": plots.plot_accuracy_vs_bytes(rows, out / "accuracy_vs_bytes.png"),
        "component_accuracy": plots.plot_component_accuracy(
            result.component_accuracy_matched, result.client_model_accuracy, names, out / "component_accuracy.png",
            columns),
    }
    if getattr(strategy, "models_mixture", True):  # FedAvg, Local, PFedGM, FedVTC: no mixture to draw
        written["proportions"] = plots.plot_proportions(result.proportions_by_true, truth,
                                                        names, out / "proportions.png")
    if not hasattr(strategy, "load_vae") or scenario is None:  # no VAEs, or no test images here (a Flower server)
        return written
    samples, pairs, labels = [], [], []
    x_test = torch.cat([c.x_test for c in scenario.clients])
    z_test = torch.cat(list(scenario.truth.z_test))
    for j, column in zip(learned, columns):
        t = int(result.mapping[j])
        vae = strategy.load_vae(j)
        samples.append(vae.sample(num_images, generator=gen).cpu())
        x = x_test[z_test == t][:num_images].to(strategy.fabric.device)
        pairs += [x.reshape(-1, *scenario.image_shape).cpu(), vae.reconstruct(x).cpu()]
        labels += [f"{names[t]} test", f"{column} recon."]
    return {
        **written,
        "samples": plots.plot_image_grid(samples, [f"{column} ({names[result.mapping[j]]})"
                                                   for j, column in zip(learned, columns)],
                                         out / "samples.png", "samples from each component VAE"),
        "reconstructions": plots.plot_image_grid(pairs, labels, out / "reconstructions.png",
                                                 "test images and reconstructions"),
    }
