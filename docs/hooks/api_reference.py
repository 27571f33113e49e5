"""mkdocs hook: the API reference, one generated page per top-level module and subpackage of
``fedgmi`` (found on disk at build time), so modules added later appear without editing the
docs. A subpackage's page renders all its modules recursively (mkdocstrings' ``show_submodules``;
a folder without ``__init__.py`` module by module);
the package's own page (``reference/index.md``) renders ``fedgmi/__init__.py``, its public API.

The pages go under the nav entry named :data:`SECTION` in ``mkdocs.yml``.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

PACKAGE = "fedgmi"
SECTION = "API reference"
ROOT = Path(__file__).resolve().parents[2]


def _modules() -> list[str]:
    """Top-level modules and subpackages of the package, by name (private ones left out)."""
    names = []
    for path in sorted((ROOT / PACKAGE).iterdir()):
        if path.name.startswith(("_", ".")):
            continue
        if path.is_dir() and any(path.glob("*.py")):
            names.append(path.name)
        elif path.suffix == ".py":
            names.append(path.stem)
    return names


def _pages() -> dict[str, tuple[str, str]]:
    """``src_uri -> (nav title, markdown)`` of every reference page."""
    pages = {"reference/index.md": (PACKAGE, f"# `{PACKAGE}`\n\n::: {PACKAGE}\n    options:\n"
                                              "      show_submodules: false\n")}
    for name in _modules():
        dotted = f"{PACKAGE}.{name}"
        pages[f"reference/{name}.md"] = (dotted, f"# `{dotted}`\n\n" + _render(dotted, ROOT / PACKAGE / name))
    return pages


def _render(dotted: str, path: Path) -> str:
    """mkdocstrings directives for a module or package; a namespace package (a folder without
    ``__init__.py``, which mkdocstrings cannot load as one) as each of its modules."""
    if not path.is_dir() or (path / "__init__.py").is_file():
        return f"::: {dotted}\n"
    modules = sorted(m.stem for m in path.glob("*.py") if not m.stem.startswith("_"))
    return "\n".join(f"## `{dotted}.{m}`\n\n::: {dotted}.{m}\n    options:\n      heading_level: 3\n"
                     for m in modules)


def on_config(config):
    """Fill the nav section :data:`SECTION` with the generated pages."""
    for entry in config["nav"] or []:
        if isinstance(entry, dict) and SECTION in entry:
            entry[SECTION] = [{title: uri} for uri, (title, _) in _pages().items()]
            return config
    raise ValueError(f"mkdocs.yml: the nav has no section {SECTION!r} for the API reference")


def on_files(files, config):
    """Add the generated reference pages to the site's files."""
    for uri, (_, markdown) in _pages().items():
        files.append(File.generated(config, uri, content=markdown))
    return files
