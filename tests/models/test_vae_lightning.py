"""ComponentVAE as a plain LightningModule: batch formats, epoch means, and the whole
fit / validate / test / predict / load_from_checkpoint cycle on real data (sklearn digits)."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import lightning
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from fedgmi.errors import ConfigError
from fedgmi.models import ComponentVAE, ConvVAE


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
    return images, torch.tensor(digits.target)  # int64 labels


def _trainer(**kwargs) -> lightning.Trainer:
    kwargs = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
              "enable_progress_bar": False, "enable_model_summary": False, **kwargs}
    return lightning.Trainer(**kwargs)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # num_workers / small-dataset advice
        return fn(*args, **kwargs)


def _model(seed: int = 0, **kwargs) -> ComponentVAE:
    torch.manual_seed(seed)
    kwargs = {"hidden_dims": (64,), "latent_dim": 8, "lr": 3e-3, **kwargs}
    return ComponentVAE((1, 8, 8), **kwargs)


# ---------------------------------------------------------------------------------- batches
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_tells_labels_from_weights_by_dtype() -> None:
    model = _model()
    x = (torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    y = torch.tensor([3, 1, 4, 1])
    w = torch.tensor([1.0, 0.0, 0.0, 0.0])

    def loss(batch) -> torch.Tensor:
        torch.manual_seed(0)
        return model.training_step(batch, 0)

    torch.manual_seed(0)
    plain = model.weighted_negative_elbo(x)
    torch.manual_seed(0)
    weighted = model.weighted_negative_elbo(x, w)
    assert not torch.allclose(plain, weighted)
    for batch in (x, (x,), [x], (x, y), (x, y.int())):
        torch.testing.assert_close(loss(batch), plain)  # labels are ignored
    for batch in ((x, w), (x, y, w), (x, w.double())):
        torch.testing.assert_close(loss(batch), weighted)


@pytest.mark.parametrize(
    ("batch", "needle"),
    [
        (lambda x, y, w: (x, w, y), "order (y, w)"),  # weights before labels
        (lambda x, y, w: (x, y, y), "order (y, w)"),  # two label tensors
        (lambda x, y, w: (x, w[:3]), "(float32 (4, 64), float32 (3,))"),  # wrong length
        (lambda x, y, w: (x, y > 1), "bool (4,)"),  # bool is neither
        (lambda x, y, w: (x, y, w, w), "(x, y, w)"),  # too many elements
        (lambda x, y, w: {"x": x}, "batch dict"),
        (lambda x, y, w: (y.tolist(),), "batch (list)"),
    ],
)
def test_bad_batches_are_one_line_config_errors(batch, needle: str) -> None:
    model = _model()
    x, y, w = torch.rand(4, 64), torch.arange(4), torch.ones(4)
    with pytest.raises(ConfigError) as info:
        model.training_step(batch(x, y, w), 0)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_forward_is_the_log_likelihood_estimate() -> None:
    model = _model(estimator="iwae", num_samples=4)
    x = torch.rand(5, 1, 8, 8)
    assert model(x).shape == (5,)
    torch.manual_seed(3)
    got = model(x)
    torch.manual_seed(3)
    torch.testing.assert_close(got, model.iwae(x, num_samples=4))


# ---------------------------------------------------------------------------------- epoch means
def test_validation_logs_exact_weighted_epoch_means() -> None:
    """val/elbo over three batches of different sizes and weights is the weighted mean over the
    whole set, not a mean of batch means."""
    images, labels = _digits()
    x, y = images[:70], labels[:70]
    w = torch.rand(70, generator=torch.Generator().manual_seed(1)) * (torch.arange(70) < 40)
    class Recording(ComponentVAE):  # keeps the per-sample ELBOs the validation loop computed
        def elbo(self, *args, **kwargs) -> torch.Tensor:
            out = super().elbo(*args, **kwargs)
            seen.append(out.detach())
            return out

    seen: list[torch.Tensor] = []
    torch.manual_seed(0)
    model = Recording((1, 8, 8), hidden_dims=(64,), latent_dim=8)
    loader = DataLoader(TensorDataset(x, y, w), batch_size=32)  # batches of 32, 32, 6
    logged = _quiet(_trainer().validate, model, loader, verbose=False)[0]
    elbo = torch.cat(seen)
    assert elbo.shape == (70,)
    want = (w * elbo).sum() / w.sum()
    assert logged["val/elbo"] == pytest.approx(want.item(), rel=1e-6)
    assert logged["val/elbo_bits_per_dim"] == pytest.approx(-want.item() / (64 * math.log(2)), rel=1e-6)
    batch_means = [((wb * eb).sum() / wb.sum()).item() for wb, eb in zip(w.split(32), elbo.split(32))
                   if wb.sum() > 0]
    assert abs(sum(batch_means) / len(batch_means) - want.item()) > 1e-3  # the naive mean differs


# ---------------------------------------------------------------------------------- the cycle
def test_fit_validate_test_predict_and_reload_on_digits(tmp_path: Path) -> None:
    images, labels = _digits()
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train, val = perm[:1500], perm[1500:]
    train_loader = DataLoader(TensorDataset(images[train], labels[train]), batch_size=64, shuffle=True)
    val_loader = DataLoader(TensorDataset(images[val], labels[val]), batch_size=128)

    model = _model(estimator="iwae", num_samples=16)
    with torch.no_grad():
        before = model.elbo(images[val], num_samples=16, generator=torch.Generator().manual_seed(1)).mean()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/elbo", mode="max", filename="best")
    trainer = _trainer(max_epochs=30, enable_checkpointing=True, callbacks=[checkpoint])
    _quiet(trainer.fit, model, train_loader, val_loader)  # (images, labels) batches, as a user has them

    logged = trainer.callback_metrics
    assert {"train/neg_elbo_step", "train/neg_elbo_epoch", "val/elbo", "val/elbo_bits_per_dim"} <= set(logged)
    with torch.no_grad():
        after = model.elbo(images[val], num_samples=16, generator=torch.Generator().manual_seed(1)).mean()
    assert after - before > 10.0, (before, after)  # it learned: tens of nats per image
    assert -logged["train/neg_elbo_epoch"].item() == pytest.approx(after.item(), abs=3.0)

    validated = _quiet(trainer.validate, model, val_loader, verbose=False)[0]
    assert validated["val/elbo"] == pytest.approx(after.item(), abs=1.0)
    tested = _quiet(trainer.test, model, val_loader, verbose=False)[0]
    assert set(tested) == {"test/elbo", "test/elbo_bits_per_dim", "test/log_likelihood"}
    assert tested["test/elbo"] == pytest.approx(validated["val/elbo"], abs=1.0)
    assert tested["test/log_likelihood"] > tested["test/elbo"]  # IWAE-16 is tighter than the ELBO
    assert tested["test/elbo_bits_per_dim"] == pytest.approx(-tested["test/elbo"] / (64 * math.log(2)), rel=1e-5)

    torch.manual_seed(7)
    predicted = _quiet(trainer.predict, model, val_loader)
    assert len(predicted) == math.ceil(len(val) / 128)
    log_lik = torch.cat([p["log_likelihood"] for p in predicted])
    latent = torch.cat([p["latent_mean"] for p in predicted])
    assert log_lik.shape == (len(val),) and latent.shape == (len(val), 8)
    assert log_lik.mean().item() == pytest.approx(tested["test/log_likelihood"], abs=1.0)
    with torch.no_grad():
        torch.testing.assert_close(latent, model.encode(images[val])[0])

    best = ComponentVAE.load_from_checkpoint(checkpoint.best_model_path)  # the best val/elbo epoch
    assert best.hparams == model.hparams and best.estimator == "iwae"
    assert set(best.state_dict()) == set(model.state_dict())  # the epoch means are not saved
    assert _quiet(_trainer().validate, best, val_loader, verbose=False)[0]["val/elbo"] > before + 10.0
    last = tmp_path / "last.ckpt"
    trainer.save_checkpoint(last)
    reloaded = ComponentVAE.load_from_checkpoint(last)
    torch.manual_seed(7)
    again = _quiet(_trainer().predict, reloaded, val_loader)
    torch.testing.assert_close(torch.cat([p["latent_mean"] for p in again]), latent)
    torch.testing.assert_close(torch.cat([p["log_likelihood"] for p in again]), log_lik)


def test_conv_vae_subclass_runs_the_same_cycle(tmp_path: Path) -> None:
    """A subclass (convolutional, discretised logistic) keeps every hook and reloads with its own
    hyperparameters."""
    torch.manual_seed(0)
    model = ConvVAE((1, 8, 8), channels=(4, 8), latent_dim=3)
    images, labels = _digits()
    x = (images[:96] * 255).round() / 255  # 8-bit values for the discretised likelihood
    loader = DataLoader(TensorDataset(x, labels[:96]), batch_size=32)
    trainer = _trainer(max_epochs=2, enable_checkpointing=True, default_root_dir=tmp_path)
    _quiet(trainer.fit, model, loader, loader)
    tested = _quiet(trainer.test, model, loader, verbose=False)[0]
    assert math.isfinite(tested["test/elbo"])
    predicted = _quiet(trainer.predict, model, loader)
    assert predicted[0]["log_likelihood"].shape == (32,) and predicted[0]["latent_mean"].shape == (32, 3)
    path = tmp_path / "conv.ckpt"
    trainer.save_checkpoint(path)
    reloaded = ConvVAE.load_from_checkpoint(path)
    assert reloaded.likelihood == "discretized_logistic" and reloaded.channels == (4, 8)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode(x)[0], model.encode(x)[0])


def test_the_documented_lightning_example_runs(capsys) -> None:
    """docs/concepts/fedgmi.md, "The component VAE in your own Lightning project", as written."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "concepts" / "fedgmi.md").read_text()
    section = page[page.index("### The component VAE in your own Lightning project"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    _quiet(exec, compile(code, "docs/concepts/fedgmi.md", "exec"), {"__name__": "vae_example"})
    out = capsys.readouterr().out
    assert "'test/log_likelihood':" in out and "'test/elbo':" in out
    assert "torch.Size([256]) torch.Size([256, 8])" in out
