"""Shared command-line plumbing: logging set-up and turning bad input into one line + exit code 2."""
from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable

from pirl_pipeline.errors import PirlInputError

DEVICE_HELP = "default: cuda when available"


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def cli_entry(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a ``main(argv)``: PirlInputError -> ``error: <message>`` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        setup_logging()
        try:
            return int(main(argv) or 0)
        except PirlInputError as err:
            print(f"\nerror: {err}", file=sys.stderr)  # newline: a progress bar may be mid-line
            return 2

    return wrapper


def command(build_parser: Callable[[], argparse.ArgumentParser],
            run: Callable[[argparse.Namespace], object]) -> Callable[[list[str] | None], int]:
    """The ``main(argv)`` of a command: ``run(build_parser().parse_args(argv))`` under ``cli_entry``; it
    belongs to ``run``'s module (the demo prints commands by module name)."""

    def main(argv: list[str] | None = None) -> int:
        run(build_parser().parse_args(argv))
        return 0

    main.__module__ = run.__module__
    return cli_entry(main)


def resolve_device(choice: str | None) -> str:
    """The ``-device`` of a command: ``cuda`` when available unless one is named (DEVICE_HELP); ``cuda`` named
    on a machine without it is a PirlInputError."""
    import torch  # here: the other commands of this module start without it

    device = choice or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise PirlInputError("-device cuda: no CUDA device is available")
    return device
