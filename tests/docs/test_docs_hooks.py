"""The documentation site's hooks (docs/hooks/): generated pages and docstring conventions.

The whole site is built in strict mode by ``make docs`` (CI runs it after the tests)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import griffe
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pages():
    return _load("generated_pages")


@pytest.fixture(scope="module")
def docstrings():
    return _load("griffe_docstrings")


def test_every_module_and_subpackage_gets_a_reference_page(pages) -> None:
    api = pages.api_pages()
    expected = {p.stem for p in (ROOT / "fedgmi").glob("*.py") if not p.stem.startswith("_")}
    expected |= {p.name for p in (ROOT / "fedgmi").iterdir() if p.is_dir() and any(p.glob("*.py"))}
    assert {uri.removeprefix("reference/").removesuffix(".md") for uri in api} == expected | {"index"}
    title, text = api["reference/models.md"]
    assert title == "fedgmi.models" and "::: fedgmi.models" in text


def test_every_result_table_gets_a_page_with_a_title_and_its_plot(pages) -> None:
    results = pages.result_pages()
    tables = sorted((ROOT / "benchmarks" / "results").glob("*.md"))
    assert tables and all(f"benchmarks/results/{t.name}" in results for t in tables)
    for table in tables:
        _, text = results[f"benchmarks/results/{table.name}"]
        assert text.startswith("# ") and table.read_text() in text
    for plot in (ROOT / "benchmarks" / "results").glob("*.png"):
        if plot.with_suffix(".md").is_file():
            assert results[f"benchmarks/results/{plot.name}"][1] == plot.read_bytes()


def test_generated_sections_fill_the_nav_at_any_depth(pages) -> None:
    nav = [{"Home": "index.md"}, {"Benchmarks": [{"A": "a.md"}, {"Result tables": []}]}, {"API reference": []}]
    pages._fill(nav, {"Result tables": {"r/x.md": ("x", ""), "r/x.png": ("", b"")},
                      "API reference": {"ref/m.md": ("m", "")}})
    assert nav[1]["Benchmarks"][1] == {"Result tables": [{"x": "r/x.md"}]}  # pages only, no plots
    assert nav[2] == {"API reference": [{"m": "ref/m.md"}]}


def test_grouped_parameters_become_one_entry_each(docstrings) -> None:
    text = """Summary.

Args:
    x: Inputs.
    lr, estimator, num_samples: As the parent's,
        on two lines.
    y: Labels.

Returns:
    a, b: not a parameter section, left alone."""
    out = docstrings.split_grouped_parameters(text)
    assert "    lr: As the parent's,\n        on two lines.\n    estimator: As the parent's,\n" in out
    assert "    num_samples: As the parent's,\n        on two lines.\n    y: Labels." in out
    assert out.endswith("Returns:\n    a, b: not a parameter section, left alone.")


def test_sphinx_roles_become_cross_references(docstrings) -> None:
    module = griffe.load("fedgmi.metrics.mixture_metrics", search_paths=[str(ROOT)])
    convert = docstrings.sphinx_roles_to_crossrefs
    assert convert(":func:`map_components`", module) == "[`map_components`][fedgmi.metrics.mixture_scores.map_components]"
    assert convert(":class:`~fedgmi.models.ComponentVAE`", module) == "[`ComponentVAE`][fedgmi.models.ComponentVAE]"
    assert convert(":meth:`~torchmetrics.Metric.merge_state`", module) == "`merge_state`"  # another library
    assert convert(":meth:`not_a_name`", module) == "`not_a_name`"  # out of scope: plain code
    accuracy = module["AssignmentAccuracy"]
    assert convert(":meth:`compute`", accuracy) == "[`compute`][fedgmi.metrics.mixture_metrics.AssignmentAccuracy.compute]"
    assert convert(":class:`~fedgmi.federated.\n    strategy.Strategy`", module) == \
        "[`Strategy`][fedgmi.federated.strategy.Strategy]"  # wrapped over two lines
