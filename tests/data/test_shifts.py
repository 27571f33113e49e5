"""Scenario invariants for every kind of inherent distribution, and their one-line errors."""

from __future__ import annotations

import pytest
import torch

from fedgmi.data import (
    ClassSkew,
    Composed,
    Corruption,
    DatasetUnion,
    LabelPermutation,
    Rotation,
    ScenarioConfig,
    Transformed,
    build_scenario,
    load_base_dataset,
)
from fedgmi.data.shifts import CORRUPTIONS, corrupt_images, resize_images, rotate_images
from fedgmi.errors import ConfigError
from tests.data.formats import write_idx_dataset


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDGMI_DATA_DIR", raising=False)


SETTINGS = {"num_clients": 8, "samples_per_client": (40, 70), "seed": 5, "alpha": 0.7}

KINDS = {
    "rotation": lambda: Rotation([0, 90, 180]),
    "corruption": lambda: Corruption(["none", "noise", "blur", "contrast", "inversion"], severity=4),
    "label_permutation": lambda: LabelPermutation(3),
    "class_skew_groups": lambda: ClassSkew(3),
    "class_skew_subsets": lambda: ClassSkew(classes=[[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7], [6, 7, 8, 9, 0]]),
    "class_skew_dirichlet": lambda: ClassSkew(4, dirichlet=1.0),
    "union": lambda: DatasetUnion(["mnist"], image_shape=[1, 8, 8]),
    "transformed": lambda: Transformed([None, lambda x: x.flip(-1), lambda x: 1 - x]),
    "rotation_permutation": lambda: Composed([Rotation([0, 90, 180]), LabelPermutation(3)]),
    "skew_corruption": lambda: Composed([Corruption(["none", "noise", "contrast"]), ClassSkew(3)]),
}


@pytest.fixture(scope="module")
def union_mnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("union")
    write_idx_dataset(root, "mnist", 300, 100, seed=7)
    return load_base_dataset("mnist", root, download=False)


def _build(kind: str, digits_base, union_mnist, **overrides):
    config = ScenarioConfig(dataset="digits", shift=KINDS[kind](), **{**SETTINGS, **overrides})
    others = [union_mnist] if kind == "union" else None
    return build_scenario(config, base=digits_base, others=others)


@pytest.fixture(params=list(KINDS))
def built(request, digits_base, union_mnist):
    return request.param, _build(request.param, digits_base, union_mnist), digits_base, union_mnist


def test_pools_disjoint_proportions_and_ground_truth(built) -> None:
    kind, sc, base, other = built
    k = sc.num_components
    indices = torch.cat(sc.truth.base_index_train + sc.truth.base_index_test)
    assert indices.unique().numel() == indices.numel()  # no base image used twice
    total = len(base) + (len(other) if kind == "union" else 0)
    assert indices.min() >= 0 and indices.max() < total
    assert sc.truth.proportions.shape == (SETTINGS["num_clients"], k)
    for c, client in enumerate(sc.clients):
        z_tr, z_te = sc.truth.z_train[c], sc.truth.z_test[c]
        assert z_tr.shape == client.y_train.shape and z_te.shape == client.y_test.shape
        realised = torch.bincount(z_tr, minlength=k).double() / z_tr.numel()
        assert torch.allclose(sc.truth.proportions[c], realised)
        # train part follows the drawn proportions to within one sample per component
        target = sc.truth.target_proportions[c] * z_tr.numel()
        assert (torch.bincount(z_tr, minlength=k).double() - target).abs().max() <= 1.0 + 1e-9
        for x in (client.x_train, client.x_test):
            assert x.dtype == torch.float32 and x.shape[1] == sc.input_dim
            assert x.min() >= 0 and x.max() <= 1
        assert client.y_train.max() < sc.num_classes
    assert len(sc.component_names) == k == len(set(sc.component_names))


def test_samples_are_their_components_rendering(built) -> None:
    kind, sc, base, other = built
    shift = sc.config.shift
    for c, client in enumerate(sc.clients[:3]):
        idx, z = sc.truth.base_index_train[c], sc.truth.z_train[c]
        for k in range(sc.num_components):
            m = z == k
            if not bool(m.any()):
                continue
            x = client.x_train[m].reshape(-1, *sc.image_shape)
            y = client.y_train[m]
            if kind == "union":
                src = other if k == 1 else base
                offset = len(base) if k == 1 else 0
                images = resize_images(src.images[idx[m] - offset], sc.image_shape)
                assert torch.allclose(x, images) and torch.equal(y, src.labels[idx[m] - offset])
                continue
            images, labels = base.images[idx[m]], base.labels[idx[m]]
            if kind == "rotation":
                assert torch.equal(x, rotate_images(images, shift.angles[k])) and torch.equal(y, labels)
            elif kind == "label_permutation":
                assert torch.equal(x, images) and torch.equal(y, (labels + k) % 10)
            elif kind == "rotation_permutation":  # both parts, in order: its rotation and its labels
                assert torch.equal(x, rotate_images(images, 90.0 * k)) and torch.equal(y, (labels + k) % 10)
                assert sc.component_names[k] == f"rot{90 * k}+perm{k}"
            elif kind == "skew_corruption":  # the class skew chose the images, the corruption drew them
                assert set(y.tolist()) <= set(shift.shifts[1]._subsets(10)[k])
            elif kind.startswith("class_skew"):
                assert torch.equal(x, images) and torch.equal(y, labels)
            elif kind == "corruption" and shift.corruptions[k] != "noise":  # noise: seeded, checked below
                assert torch.allclose(x, corrupt_images(images, shift.corruptions[k], 4), atol=1e-6)


def test_label_permutation_keeps_images_identically_distributed(digits_base, union_mnist) -> None:
    sc = _build("label_permutation", digits_base, union_mnist, samples_per_client=(120, 160), num_clients=10)
    x = torch.cat([c.x_train for c in sc.clients])
    z = torch.cat(sc.truth.z_train)
    means = torch.stack([x[z == k].mean() for k in range(3)])
    assert (means.max() - means.min()) < 0.02  # same p(x): only the labels differ


def test_class_skew_classes_follow_their_group(digits_base, union_mnist) -> None:
    sc = _build("class_skew_groups", digits_base, union_mnist)
    groups = [{0, 1, 2, 3}, {4, 5, 6}, {7, 8, 9}]
    for c, client in enumerate(sc.clients):
        for y, z in zip(client.y_train.tolist(), sc.truth.z_train[c].tolist()):
            assert y in groups[z]
    assert sc.config.shift.distributions.shape == (3, 10)


def test_corruption_noise_is_seeded_and_leaves_global_rng(digits_base, union_mnist) -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = _build("corruption", digits_base, union_mnist)
    assert torch.equal(before, torch.random.get_rng_state())
    b = _build("corruption", digits_base, union_mnist)
    assert all(torch.equal(p.x_train, q.x_train) for p, q in zip(a.clients, b.clients))
    assert [n for n in a.component_names] == ["none", "noise4", "blur4", "contrast4", "inversion4"]


def test_angles_shorthand_equals_rotation_shift(digits_base) -> None:
    a = build_scenario(ScenarioConfig(dataset="digits", angles=[0, 90, 180], **SETTINGS), digits_base)
    b = build_scenario(ScenarioConfig(dataset="digits", shift=Rotation([0, 90, 180]), **SETTINGS), digits_base)
    c = build_scenario(ScenarioConfig(dataset="digits", **SETTINGS), digits_base)  # default: rotation
    for s in (b, c):
        assert s.component_names == a.component_names
        assert all(torch.equal(p.x_train, q.x_train) and torch.equal(p.y_test, q.y_test)
                   for p, q in zip(a.clients, s.clients))


def test_colour_corruption_on_colour_images() -> None:
    x = torch.rand(4, 3, 8, 8)
    out = corrupt_images(x, "colour", 3)
    assert out.shape == x.shape and not torch.allclose(out, x) and out.min() >= 0 and out.max() <= 1
    assert CORRUPTIONS[-1] == "colour"


# --- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"dataset": "mnist", "shift": Corruption(["none", "colour"])}, "has 'colour' but dataset 'mnist' has grey images"),
        ({"dataset": "digits", "shift": Corruption(num_components=6)}, "num_components = 6 is more than the 5 corruptions"),
        ({"dataset": "mnist", "shift": LabelPermutation(11)}, "num_components = 11 is more than dataset 'mnist' with 10"),
        ({"dataset": "mnist", "shift": ClassSkew(12)}, "num_components = 12 is more than dataset 'mnist' with 10"),
        ({"dataset": "cifar10", "shift": Corruption(num_components=7)}, "allowed: K <= 6"),
        ({"dataset": "digits", "shift": Corruption(severity=0)}, "scenario.shift.init_args.severity = 0 must be"),
        ({"dataset": "digits", "shift": Corruption(["noise", "noise"])}, "repeats one"),
        ({"dataset": "digits", "shift": Corruption(["fog"])}, "has 'fog'; allowed"),
        ({"dataset": "digits", "shift": LabelPermutation(permutations=[[0, 1], [1, 0]])}, "is not a permutation of 0..9"),
        ({"dataset": "digits", "shift": ClassSkew(classes=[[1], [10]])}, "classes[1] has [10], outside"),
        ({"dataset": "digits", "shift": ClassSkew(dirichlet=-1.0)}, "dirichlet = -1.0 must be"),
        ({"dataset": "mnist", "shift": DatasetUnion(["mnist"])}, "repeats scenario.dataset = 'mnist'"),
        ({"dataset": "mnist", "shift": DatasetUnion(["svhn"])}, "unknown dataset(s) ['svhn']"),
        ({"dataset": "digits", "angles": [0, 90], "shift": Rotation()}, "not both"),
        ({"dataset": "digits", "shift": Rotation([0, 360])}, "scenario.shift.init_args.angles"),
        ({"dataset": "digits", "shift": Composed([Rotation([0, 90])])}, "two or more shifts"),
        ({"dataset": "digits", "shift": Composed([Rotation([0, 90]), LabelPermutation(3)])},
         "Rotation K=2, LabelPermutation K=3"),
        ({"dataset": "digits", "shift": Composed([ClassSkew(2), DatasetUnion(["mnist"])])}, "compose at most one"),
    ],
)
def test_shift_errors_are_one_line(config: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        ScenarioConfig(**config)
    message = str(err.value)
    assert needle in message and "\n" not in message


def test_class_skew_that_exhausts_a_class(digits_base) -> None:
    config = ScenarioConfig(dataset="digits", shift=ClassSkew(classes=[[0], [1, 2]]), num_clients=10,
                            samples_per_client=(100, 120), seed=0)
    with pytest.raises(ConfigError, match="class skew needs .* images of class"):
        build_scenario(config, digits_base)


def test_transformed_must_keep_shape(digits_base) -> None:
    config = ScenarioConfig(dataset="digits", shift=Transformed([None, lambda x: x[..., :4]]), **SETTINGS)
    with pytest.raises(ConfigError, match=r"transforms\[1\] returned"):
        build_scenario(config, digits_base)


def test_union_rejects_unknown_dataset_name_at_build(digits_base) -> None:
    config = ScenarioConfig(dataset="digits", shift=DatasetUnion(["mnist"]), **SETTINGS)
    with pytest.raises(ConfigError, match="do not match"):
        build_scenario(config, digits_base, others=[digits_base])
