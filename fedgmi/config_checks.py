"""Checks of every input before any work, and one-line error messages.

The CLI (:mod:`fedgmi.cli`) parses with jsonargparse; this module checks what the parser cannot
(optimizer hyperparameters tried on a dummy parameter, empty or non-mapping config files, config
fields a federated run does not read) and turns errors into the one line the CLI prints: the full
dotted key (``scenario.alpha``), the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import itertools
import math
import re
import sys
import traceback
from dataclasses import fields, is_dataclass
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser, Namespace

from fedgmi.errors import ConfigError


def _subclass_specs(cfg, prefix: str = ""):
    """(dotted key, class_path, init_args) of every ``class_path``/``init_args`` block in cfg."""
    if not isinstance(cfg, Namespace):
        return
    if isinstance(cfg.get("class_path"), str):
        yield prefix, cfg.class_path, cfg.get("init_args") or Namespace()
        cfg, prefix = cfg.get("init_args") or Namespace(), f"{prefix}.init_args"
    for key, value in vars(cfg).items():
        if isinstance(value, Namespace):
            yield from _subclass_specs(value, f"{prefix}.{key}" if prefix else key)


def import_class(class_path: str):
    """The object ``class_path`` ("package.module.Name") names, or None when it cannot be imported."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


OPTIMIZER_MESSAGES = {"learning rate": "lr", "epsilon": "eps", "beta": "betas", "weight_decay": "weight_decay",
                      "momentum": "momentum", "nesterov": "nesterov", "dampening": "dampening"}


def check_optimizers(sub_cfg: Namespace) -> None:
    """Every optimizer in the config (a ``torch.optim.Optimizer`` class_path): its numeric
    hyperparameters finite, and the optimizer constructible (torch's own range checks, e.g.
    lr >= 0), tried on one dummy parameter. Raises ConfigError naming the full key."""
    for key, class_path, init_args in _subclass_specs(sub_cfg):
        cls = import_class(class_path)
        if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
            continue
        args = dict(vars(init_args))
        for name, value in args.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ConfigError(f"{key}.init_args.{name} = {value!r} must be finite")
        if "lr" in args and isinstance(args["lr"], (int, float)) and args["lr"] <= 0:
            raise ConfigError(f"{key}.init_args.lr = {args['lr']!r} must be a finite number > 0")
        try:
            cls([torch.zeros(1, requires_grad=True)], **args)
        except (ValueError, TypeError, RuntimeError) as err:
            message = one_line(str(err))
            name = next((n for word, n in OPTIMIZER_MESSAGES.items() if word in message.lower() and n in args),
                        None)
            where = f"{key}.init_args.{name} = {args[name]!r}" if name else f"{key} ({class_path})"
            raise ConfigError(f"{where} is refused by {cls.__name__}: {message}") from None


def warn_unread_fields(sub_cfg: Namespace) -> None:
    """A component VAE's own ``lr`` serves only its standalone ``configure_optimizers``: in a
    federated run local training uses the algorithm's ``optimizer``. Say so when it was set."""
    for key, class_path, init_args in _subclass_specs(sub_cfg):
        cls = import_class(class_path)
        if not key.endswith(".component") or "lr" not in init_args or cls is None:
            continue
        default = inspect.signature(cls).parameters.get("lr")
        if default is not None and init_args.lr != default.default:
            owner = key.rsplit(".init_args.", 1)[0]
            print(f"fedgmi: warning: {key}.init_args.lr = {init_args.lr!r} is not used in a federated run "
                  f"(it is {cls.__name__}'s standalone learning rate); set "
                  f"{owner}.init_args.optimizer.init_args.lr instead", file=sys.stderr)


def _owner_of_error(err: BaseException) -> object | None:
    """The innermost ``self`` in the error's traceback that is a config object (a section or a
    class named in the config), to tell which key a bare field name belongs to."""
    found = None
    for frame, _ in traceback.walk_tb(err.__traceback__):
        owner = frame.f_locals.get("self")
        if owner is not None and not isinstance(owner, (ArgumentParser, Namespace)):
            found = owner
    return found


FIELD_PHRASES = {"data folder": "data_dir", "MNIST files": "data_dir", "cannot read MNIST": "data_dir"}


def qualify(message: str, sub_cfg: Namespace, owner: object | None, sections: dict[str, type],
            section: str | None = None) -> str:
    """Name the full dotted key in a one-line error (``alpha = -1 ...`` -> ``scenario.alpha =
    -1 ...``) when the message names a bare field of the object that raised it (``owner``) or
    of ``section`` (one of ``sections``, the config sections built from a class, by key)."""
    prefix, names = None, []
    if section is not None:
        prefix, names = section, [f.name for f in fields(sections[section])] if is_dataclass(sections[section]) \
            else list(inspect.signature(sections[section]).parameters)
    elif owner is not None:
        for key, cls in sections.items():
            if isinstance(owner, cls):
                return qualify(message, sub_cfg, None, sections, key)
        for key, class_path, init_args in _subclass_specs(sub_cfg):
            cls = import_class(class_path)
            if cls is not None and type(owner) is cls:
                prefix, names = f"{key}.init_args", list(vars(init_args))
                break
    if prefix is None or message.startswith(prefix + "."):
        return message
    for phrase, name in FIELD_PHRASES.items():  # messages about a field that do not name it
        if phrase in message and name in names:
            return f"{prefix}.{name}: {message}"
    for name in sorted(names, key=len, reverse=True):
        match = re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", message)
        if match is None:
            continue
        if match.start() == 0:
            return f"{prefix}.{message}"
        return f"{prefix}.{name}: {message}"
    return f"{prefix}: {message}"


def config_error(err: BaseException, sub_cfg: Namespace, sections: dict[str, type],
                 section: str | None = None) -> ConfigError:
    """``err`` as a one-line ConfigError naming the full key (see :func:`qualify`)."""
    union = union_error(one_line(str(err)), sub_cfg)
    if union is not None:
        return ConfigError(union)
    return ConfigError(qualify(one_line(str(err)), sub_cfg, _owner_of_error(err), sections, section))


SECTION_KEYS = ("scenario", "federation", "evaluation", "fabric", "channel", "logging", "selection", "algorithm")
"""Config sections that hold settings: ``null`` for one is refused (leave it out instead)."""


def check_config_files(argv: list[str]) -> None:
    """Refuse an empty config file, one that is not a mapping of sections, or a section set to
    ``null`` (in a file or as ``--federation null``), naming it (what jsonargparse says of
    those does not)."""
    for i, arg in enumerate(argv[:-1]):
        key = arg[2:] if arg.startswith("--") else None
        if key in SECTION_KEYS and argv[i + 1].strip().lower() in ("null", "none", "~"):
            raise ConfigError(_null_section(key, f"--{key} {argv[i + 1]}"))
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--config=") else None)
        if path is None or "\n" in path or not Path(path).is_file():  # "\n": a config's text, not a path
            continue
        try:
            content = yaml.safe_load(Path(path).read_text())
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
            raise ConfigError(f"config file {path!r} is not valid YAML: {one_line(str(err))}") from None
        if content is None:
            raise ConfigError(f"config file {path!r} is empty; give sections such as scenario:, federation:, "
                              "algorithm: (see configs/)")
        if not isinstance(content, dict):
            raise ConfigError(f"config file {path!r} holds a {type(content).__name__}, not a mapping of sections "
                              "(scenario:, federation:, ...)")
        for key in SECTION_KEYS:
            if key in content and content[key] is None:
                raise ConfigError(_null_section(key, f"config file {path!r}"))


def _null_section(key: str, where: str) -> str:
    return (f"{key} = null ({where}): a section cannot be null; give its settings "
            f"({key}: {{...}}) or leave it out for the defaults")


def summarize_parser_error(message: str, algorithms: tuple[str, ...] = ()) -> str:
    """One line from jsonargparse's nested, multi-line error: the full dotted key (nested
    ``class_path`` blocks joined with ``.init_args.``), the value given and the types expected
    (``algorithm.init_args.optimizer.init_args.lr = 'x': expected float, Tensor``); an unknown
    ``algorithm`` lists ``algorithms``."""
    found = list(re.finditer(r'Parser key "([^"]+)"', message))
    if not found:
        return one_line(message)
    key = found[0].group(1)
    for prev, match in itertools.pairwise(found):
        between = message[prev.end():match.start()]
        joiner = ".init_args." if ("class_path" in between or "callable class" in between) else "."
        key += joiner + match.group(1)
    tail = message[found[-1].end():]
    value = re.search(r"(?:Given|Got) value: (.*?)(?:\.\s|\.?$|\n)", tail, flags=re.MULTILINE)
    types = re.findall(r"Expected a <class '([\w.]+)'>", tail)
    types = [t for t in dict.fromkeys(types) if t != "NoneType"] or types
    unknown = re.search(r"No action for key \"([^\"]+)\"|Key \"([^\"]+)\" is required", tail)
    detail = one_line(tail).lstrip(": ")
    given = value.group(1).strip() if value else ""
    if re.fullmatch(r"[A-Za-z_][\w.]*", given) and CLASS_PROBLEM.search(tail):
        known = f"; choose one of: {', '.join(algorithms)} (or a full class path)" if key == "algorithm" else ""
        return f"{key} = {given!r} is not a class that can be imported{suggest_class(given)}{known}"
    if given.lower().lstrip("+-") in ("inf", "infinity", "nan") and types:
        return (f"{key} = {given!r}: expected a finite {' or '.join(t for t in dict.fromkeys(types))}"
                + (" (or null)" if "NoneType" in tail else ""))
    if "dot import path" in tail and not types:
        name = re.search(r"dot import path string: (\S+)", tail)
        given = name.group(1) if name else "?"
        known = f"; choose one of: {', '.join(algorithms)} (or a full class path)" if key == "algorithm" else ""
        return f"{key} = {given!r} is not a class that can be imported{known}"
    if value and types:
        return f"{key} = {value.group(1).strip()!r}: expected {' or '.join(dict.fromkeys(types))}"
    if unknown:
        return f"{key}: {detail}"
    return f"{key}: {detail}"[:500]


CLASS_PROBLEM = re.compile(r"has no attribute|dot import path|either not accessible or invalid|"
                           r"Problem with given class_path|No module named")
"""jsonargparse's ways of saying that a class path does not import."""

CLASS_MODULES = ("fedgmi.algorithms", "fedgmi.data.shifts", "fedgmi.federated.compression", "fedgmi.models",
                 "torch.optim", "torch.optim.lr_scheduler")
"""Where the classes a config names live: the pool :func:`suggest_class` picks from."""


def suggest_class(given: str) -> str:
    """``"; did you mean 'torch.optim.Adam'?"`` for the class path (or short name) closest to
    ``given`` in its own module and :data:`CLASS_MODULES` (``""`` when none is close)."""
    module, _, name = given.rpartition(".")
    pool: dict[str, str] = {}
    for mod_name in dict.fromkeys([module, *CLASS_MODULES] if module else CLASS_MODULES):
        try:
            members = vars(importlib.import_module(mod_name))
        except Exception:  # noqa: BLE001 - a misspelled module, or one that fails to import
            members = {}
        for attr, obj in members.items():
            if inspect.isclass(obj) and not attr.startswith("_"):
                pool.setdefault(attr.lower(), f"{mod_name}.{attr}")
    match = difflib.get_close_matches(name.lower(), list(pool), n=1, cutoff=0.6)
    if not match:
        return ""
    full = pool[match[0]]
    return f"; did you mean {full!r}?" if module else f"; did you mean {full.rpartition('.')[2]!r} ({full})?"


def union_error(message: str, sub_cfg: Namespace) -> str | None:
    """One line for jsonargparse's "Does not validate against any of the Union subtypes" about
    a ``class_path`` block: the class's own error (``StochasticQuantization bits = 0 must be
    ...``) under the full key (``channel.uplink.init_args.bits = 0 must be ...``)."""
    if "Union subtypes" not in message:
        return None
    path = re.search(r"class_path='([\w.]+)'", message)
    errors = [e.strip() for e in re.findall(r"- (.*?)(?= - |Given value|$)", message.split("Errors:", 1)[-1])
              if not e.startswith("Expected a <class")]  # the other members' type mismatches
    if not path or not errors:
        return None
    key = next((k for k, cp, _ in _subclass_specs(sub_cfg) if cp == path.group(1)), None)
    short = path.group(1).rpartition(".")[2]
    detail = errors[0].removeprefix(short + " ").strip()
    if key is not None and detail.startswith(key + "."):  # the class named its full key itself
        return detail
    if key is None:
        return f"{path.group(1)}: {detail}"
    return f"{key}.init_args.{detail}" if re.match(r"\w+ = ", detail) else f"{key} ({short}): {detail}"


def one_line(message: str) -> str:
    """The message's non-empty lines joined into one, at most 500 characters."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    return " ".join(lines)[:500]


def _config_sources(args: list[str]) -> list[dict]:
    """The mappings the ``--config`` arguments give (a path's content, or the text itself)."""
    found = []
    for i, arg in enumerate(args):
        value = args[i + 1] if arg == "--config" and i + 1 < len(args) else (
            arg.split("=", 1)[1] if arg.startswith("--config=") else None)
        if value is None:
            continue
        try:
            content = yaml.safe_load(Path(value).read_text() if "\n" not in value and Path(value).is_file() else value)
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            continue
        if isinstance(content, dict):
            found.append(content)
    return found


def _algorithm_switch(args: list[str]) -> str | None:
    """The class an ``--algorithm`` / ``--algorithm.class_path`` flag switches to (the last one)."""
    switch = None
    for i, arg in enumerate(args):
        if arg in ("--algorithm", "--algorithm.class_path") and i + 1 < len(args):
            switch = args[i + 1]
        elif arg.startswith(("--algorithm=", "--algorithm.class_path=")):
            switch = arg.split("=", 1)[1]
    if switch is not None and switch.lstrip().startswith("{"):
        switch = (yaml.safe_load(switch) or {}).get("class_path")
    return switch if isinstance(switch, str) else None


def dropped_algorithm_options(args: list[str], final_init_args: Namespace | None) -> str | None:
    """One line naming each ``algorithm.init_args`` option the config files set that an
    ``--algorithm`` switch to another class drops (the new class does not take it), or None."""
    switch = _algorithm_switch(args)
    if switch is None:
        return None
    given_class: str | None = None
    given: dict[str, object] = {}
    for content in _config_sources(args):
        section = content.get("algorithm")
        if not isinstance(section, dict):
            continue
        if isinstance(section.get("class_path"), str) and section["class_path"] != given_class:
            given_class, given = section["class_path"], {}
        given.update(section.get("init_args") or {})
    if given_class is None or given_class.rpartition(".")[2] == switch.rpartition(".")[2]:
        return None
    kept = set(vars(final_init_args)) if isinstance(final_init_args, Namespace) else set()
    dropped = [f"algorithm.init_args.{k} = {_short(v)}" for k, v in given.items() if k not in kept]
    if not dropped:
        return None
    carried = [k for k in given if k in kept]
    return (f"--algorithm {switch} drops what the config set for {given_class.rpartition('.')[2]} and "
            f"{switch.rpartition('.')[2]} does not take: {', '.join(dropped)}"
            + (f" (kept: {', '.join(carried)})" if carried else ""))


def _short(value: object, width: int = 40) -> str:
    """``repr(value)``, cut to ``width`` characters."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."
