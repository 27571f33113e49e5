"""``fedgmi`` command line: a thin shell over the run layer (:mod:`fedgmi.run`, which
:func:`fedgmi.fit` and the Flower ServerApp call too) and the parser (:mod:`fedgmi.run_config`).

``fedgmi fit --config FILE`` trains and evaluates (``--ckpt_path PATH`` resumes a run exactly:
same round, client state and random state); ``fedgmi test --config FILE --ckpt_path PATH``
evaluates a finished run's checkpoint without training and writes the same metric files;
``fedgmi validate --config FILE`` checks a config, its data files and a checkpoint, and runs
nothing; ``fedgmi select_k --config FILE --selection.k_max 5`` chooses the number of components
K by held-out federated likelihood (:mod:`fedgmi.selection`).

Follows LightningCLI's conventions through jsonargparse: ``--config`` (repeatable, later files
and flags override earlier ones), ``--print_config``, dotted overrides such as
``--federation.rounds 5``, and ``class_path``/``init_args`` for swappable parts (the
algorithm, its component model and its optimizer). ``--print_config`` prints the config as
given, after one warning line on stderr when a value in it would be refused. An invalid value stops before any work with
one line on stderr and exit status 2. SIGTERM/SIGINT stop a fit after the current round with a
checkpoint (exit 128 + signal number); a NaN/Inf training loss stops it with exit status 1 and a
line naming the round and the client, keeping every output written so far.
"""

from __future__ import annotations

import signal
import sys

from rich.console import Console

from fedgmi.config_checks import config_error, one_line, summarize_parser_error
from fedgmi.errors import ConfigError
from fedgmi.run import Stopped, parse, run_fit, run_select_k, run_test, run_validate
from fedgmi.run_config import (
    ALGORITHMS,
    SECTIONS,
    FabricConfig,
    build_parser,
    instantiate,
    subcommand_parser,
)
from fedgmi.validation import MAX_SEED, check_int

__all__ = ["ALGORITHMS", "COMMANDS", "FabricConfig", "build_parser", "instantiate", "main"]

COMMANDS = {"fit": run_fit, "test": run_test, "validate": run_validate, "select_k": run_select_k}
"""The subcommands: each takes (parser, parsed config, console) (:mod:`fedgmi.run`)."""


def warn_if_refused(argv: list[str]) -> None:
    """With ``--print_config`` in ``argv``: build the config's objects from the rest of ``argv``
    (every section's and the algorithm's own checks; no data is read, nothing is written) and
    print one warning line on stderr when a value would be refused. jsonargparse then prints
    the config as given."""
    rest = [a for a in argv if not a.startswith("--print_config")]
    if len(rest) == len(argv):
        return
    try:
        parser, cfg = parse(rest)
        sub_cfg = cfg[cfg.subcommand]
        check_int("seed", sub_cfg.seed, 0, MAX_SEED)
        try:
            subcommand_parser(parser, cfg.subcommand).instantiate(sub_cfg)
        except (TypeError, ValueError) as err:
            raise config_error(err, sub_cfg, SECTIONS) from None
    except ConfigError as err:
        print(f"fedgmi: warning: the printed config would be refused: {one_line(str(err))}", file=sys.stderr)
    except Exception as err:
        if type(err).__name__ != "ArgumentError":
            raise


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedgmi`` console script; returns the exit status."""
    console = Console()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        warn_if_refused(argv)
        parser, cfg = parse(argv)
        COMMANDS[cfg.subcommand](parser, cfg, console)
        return 0
    except ConfigError as err:
        print(f"fedgmi: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except Stopped as err:
        print(f"fedgmi: {err}", file=sys.stderr)
        return err.status
    except KeyboardInterrupt:
        print("fedgmi: SIGINT: stopped outside the training loop (what was written so far stays)", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as err:  # jsonargparse's ArgumentError and friends
        if type(err).__name__ != "ArgumentError":
            raise
        print(f"fedgmi: error: {summarize_parser_error(str(err), ALGORITHMS)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
