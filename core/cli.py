"""The umbrella ``cryodiscovery`` command: one subcommand per module in
``cryodiscovery.core.commands``, plus subcommands that other parts of the package register
under the ``cryodiscovery.commands`` entry-point group (so core imports no adapter code).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from types import FrameType, ModuleType

from cryodiscovery.core import __version__
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.outputs import interrupt_or_hold

log = logging.getLogger(__name__)

#: Core subcommands, in the order ``--help`` lists them.
CORE_COMMANDS: tuple[str, ...] = (
    "demo",
    "simulate",
    "score",
    "apply-selection",
    "train",
    "evaluate",
)


def _command_modules() -> dict[str, ModuleType]:
    modules = {
        name: importlib.import_module(
            f"cryodiscovery.core.commands.{name.replace('-', '_')}"
        )
        for name in CORE_COMMANDS
    }
    for ep in entry_points(group="cryodiscovery.commands"):
        try:
            modules[ep.name] = ep.load()
        except ImportError as err:  # its extra is not installed: the rest still work
            modules[ep.name] = _unavailable(ep.name, err)
    return modules


def _unavailable(name: str, err: ImportError) -> ModuleType:
    """A stand-in subcommand that fails with one line naming the extra to install."""
    module = ModuleType(name, f"(not available: {err})")

    def add_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def main(args: argparse.Namespace) -> int:
        raise InputError(
            None, f'cannot load it ({err}): pip install "cryodiscovery[{name}]"'
        )

    module.add_args = add_args  # type: ignore[attr-defined]
    module.main = main  # type: ignore[attr-defined]
    return module


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="cryodiscovery",
        description="Automated 2D class-average selection for cryo-EM.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in _command_modules().items():
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(
            name,
            help=doc.splitlines()[0] if doc else None,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_args(p)
        p.set_defaults(_main=module.main)
    return parser


def configure_logging(verbose: bool = False) -> None:
    """Plain log lines on stderr; called by entry points only, never by library code."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


@contextlib.contextmanager
def sigterm_interrupts(
    error: Callable[[], BaseException] = lambda: KeyboardInterrupt("SIGTERM"),
) -> Iterator[None]:
    """Within the block, SIGTERM (``kill``, a queue's time limit) raises ``error()``
    (default :class:`KeyboardInterrupt`, as Ctrl-C), so staged outputs are removed and
    the command exits 130 instead of dying with partial files left behind; while
    outputs are being put in place (:func:`~cryodiscovery.core.outputs.commit_section`)
    it waits for the last rename."""

    def handler(signum: int, frame: FrameType | None) -> None:
        interrupt_or_hold(error())

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run ``cryodiscovery`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    SIGTERM is an interruption from the start (importing the subcommands takes a
    second or two) to the end: exit 130 whenever it comes."""
    with sigterm_interrupts():
        try:
            args = build_parser().parse_args(argv)
        except KeyboardInterrupt:
            print("cryodiscovery: interrupted", file=sys.stderr)
            return 130
        return _run(args, argv)


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    # The exact command line, for the record every output folder gets.
    args._argv = ["cryodiscovery", *(sys.argv[1:] if argv is None else argv)]
    configure_logging(args.verbose)
    try:
        return int(args._main(args) or 0)
    except InputError as err:
        print(f"cryodiscovery {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cryodiscovery {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # a full disk, a folder that went away: not a program bug
        log.debug("failed", exc_info=True)
        where = f"{err.filename}: " if err.filename else ""
        print(
            f"cryodiscovery {args.command}: error: {where}{err.strerror or err}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
