"""griffe extension: read the project's docstrings as they are written.

Two conventions of the docstrings that griffe's Google parser does not know:

* Napoleon-style grouped parameters, ``lr, estimator, num_samples: As ComponentVAE.`` (griffe
  reads one parameter named ``lr, estimator, num_samples``, which matches no signature
  parameter and fails the strict build): rewritten into one entry per name with the shared
  description, so each name is still checked against the signature.
* Sphinx roles, ``:class:`~fedgmi.models.ComponentVAE```, ``:meth:`log_likelihood```: rewritten
  into mkdocstrings cross-references. A full ``fedgmi.`` path must resolve, so a reference
  broken by a rename fails the strict build; a relative name links where Python's scope rules
  find it from the docstring's object (its module's names and imports, a class's members) and
  is plain code otherwise (an inherited method, another class's member); other libraries'
  names are plain code (no inventory offline).

Runs once per package, after griffe loaded it (so names defined later in a module resolve).
"""

from __future__ import annotations

import re

from griffe import Extension, Module, NameResolutionError, Object

_SECTION = re.compile(r"^(\s*)(Args|Arguments|Params|Parameters|Keyword Args|Keyword Arguments|"
                      r"Other Parameters):\s*$")
_GROUPED = re.compile(r"^(\s+)(\**\w+(?:\s*,\s*\**\w+)+)\s*:(.*)$")
_ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|exc|obj):`(~?)(\w[\w.\s]*?)(?:\(\))?`")  # may wrap
PACKAGE = "fedgmi"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def split_grouped_parameters(text: str) -> str:
    """``a, b: desc`` entries of parameter sections -> ``a: desc`` and ``b: desc``
    (continuation lines repeated under each name); the rest of ``text`` unchanged."""
    lines, out, section_indent, i = text.splitlines(), [], None, 0
    while i < len(lines):
        line = lines[i]
        if section_indent is not None and line.strip() and _indent(line) <= section_indent:
            section_indent = None  # the section ended
        header = _SECTION.match(line)
        if header:
            section_indent = len(header.group(1))
        grouped = _GROUPED.match(line) if section_indent is not None and not header else None
        if grouped is None:
            out.append(line)
            i += 1
            continue
        indent, names, first = grouped.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() and _indent(lines[end]) > len(indent):
            end += 1
        for name in names.split(","):
            out.append(f"{indent}{name.strip()}:{first}")
            out.extend(lines[i + 1:end])
        i = end
    return "\n".join(out)


def _target(obj: Object, name: str) -> str | None:
    """The full path a role's name refers to from ``obj``, or ``None`` (plain code)."""
    if name.split(".", 1)[0] == PACKAGE:
        return name  # must resolve: the build fails on a broken one
    head, _, rest = name.partition(".")
    try:
        path = obj.resolve(head)
    except NameResolutionError:
        return None
    if not path.startswith(f"{PACKAGE}."):
        return None  # an import from another library
    return f"{path}.{rest}" if rest else path


def sphinx_roles_to_crossrefs(text: str, obj: Object) -> str:
    """``:class:`~a.b.C``` -> ``[`C`][a.b.C]``, relative names resolved from ``obj``
    (module docstring)."""
    def replace(match: re.Match) -> str:
        tilde, name = match.group(1), re.sub(r"\s+", "", match.group(2))
        shown = name.rsplit(".", 1)[-1] if tilde else name
        target = _target(obj, name)
        return f"`{shown}`" if target is None else f"[`{shown}`][{target}]"
    return _ROLE.sub(replace, text)


def _objects(obj: Object):
    """``obj`` and its own members, recursively (aliases left out: they are someone else's)."""
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


class ProjectDocstrings(Extension):
    """Applies both rewrites to every docstring of a loaded package."""

    def on_package(self, *, pkg: Module, **kwargs) -> None:
        for obj in _objects(pkg):
            if obj.docstring is not None:
                text = split_grouped_parameters(obj.docstring.value)
                obj.docstring.value = sphinx_roles_to_crossrefs(text, obj)
