"""mkdocs hook: the pages that follow the repository instead of being written by hand.

* ``API reference``: one page per top-level module and subpackage of ``fedgmi``, found on disk
  at build time, so modules added later appear without editing the docs. A subpackage's page
  renders all its modules recursively (mkdocstrings' ``show_submodules``; a folder without
  ``__init__.py``, which mkdocstrings cannot load as a package, module by module); the
  package's own page renders ``fedgmi/__init__.py``, its public API.
* ``Result tables``: one page per ``benchmarks/results/*.md``, its text as it is (the
  benchmarks write these files), with the plot of the same name when there is one.

Each list fills the nav section of that name in ``mkdocs.yml`` (declared there as ``[]``).
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "fedgmi"
RESULTS = ROOT / "benchmarks" / "results"


def _render(dotted: str, path: Path) -> str:
    """mkdocstrings directives for a module or package (a namespace package module by module)."""
    if not path.is_dir() or (path / "__init__.py").is_file():
        return f"::: {dotted}\n"
    modules = sorted(m.stem for m in path.glob("*.py") if not m.stem.startswith("_"))
    return "\n".join(f"## `{dotted}.{m}`\n\n::: {dotted}.{m}\n    options:\n      heading_level: 3\n"
                     for m in modules)


def api_pages() -> dict[str, tuple[str, str | bytes]]:
    """``src_uri -> (nav title, content)`` of the API reference."""
    pages: dict[str, tuple[str, str | bytes]] = {
        "reference/index.md": (PACKAGE, f"# `{PACKAGE}`\n\n::: {PACKAGE}\n    options:\n      show_submodules: false\n"),
    }
    for path in sorted((ROOT / PACKAGE).iterdir()):
        is_package = path.is_dir() and any(path.glob("*.py"))
        if path.name.startswith(("_", ".")) or not (is_package or path.suffix == ".py"):
            continue
        dotted = f"{PACKAGE}.{path.stem}"
        pages[f"reference/{path.stem}.md"] = (dotted, f"# `{dotted}`\n\n" + _render(dotted, path))
    return pages


def result_pages() -> dict[str, tuple[str, str | bytes]]:
    """``src_uri -> (nav title, content)`` of the benchmark result tables (and their plots)."""
    pages: dict[str, tuple[str, str | bytes]] = {}
    for table in sorted(RESULTS.glob("*.md")):
        text = table.read_text()
        if not text.lstrip().startswith("# "):
            text = f"# `{table.name}`\n\n{text}"
        text += f"\n\n*`benchmarks/results/{table.name}`, written by the benchmark that made it.*\n"
        plot = table.with_suffix(".png")
        if plot.is_file():
            text += f"\n![{plot.name}]({plot.name})\n"
            pages[f"benchmarks/results/{plot.name}"] = ("", plot.read_bytes())
        pages[f"benchmarks/results/{table.name}"] = (table.stem, text)
    return pages


SECTIONS = {"API reference": api_pages, "Result tables": result_pages}


def _fill(nav: list, generated: dict[str, dict]) -> None:
    """Replace each nav section named in ``generated`` (at any depth) by its pages."""
    for entry in nav:
        if not isinstance(entry, dict):
            continue
        for title, value in entry.items():
            if title in generated:
                entry[title] = [{name: uri} for uri, (name, _) in generated[title].items() if uri.endswith(".md")]
            elif isinstance(value, list):
                _fill(value, generated)


def on_config(config):
    """Fill the generated nav sections."""
    config["nav"] = config["nav"] or []
    _fill(config["nav"], {title: make() for title, make in SECTIONS.items()})
    return config


def on_files(files, config):
    """Add the generated pages (and plots) to the site's files."""
    for make in SECTIONS.values():
        for uri, (_, content) in make().items():
            files.append(File.generated(config, uri, content=content))
    return files
