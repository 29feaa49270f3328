"""Shared command-line plumbing: logging set-up and turning bad input into one line + exit code 2."""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from pirl_pipeline import run_lock
from pirl_pipeline.errors import PirlInputError

DEVICE_HELP = "default: cuda when available"


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def _argument_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    raise PirlInputError(f"{message.removeprefix('argument ')} (see {parser.prog} -h)")


@contextlib.contextmanager
def _one_line_argument_errors() -> Iterator[None]:
    """argparse's errors (usage lines, then ``PROG: error: ...``, exit 2) as PirlInputErrors, like every other
    bad input; ``ArgumentParser.error`` is argparse's documented hook, set only while a command runs."""
    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _argument_error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def close_progress_bars() -> None:
    """Close every open tqdm bar now: a bar left open (e.g. iterated by a frame the traceback keeps alive) is
    drawn again when it is closed later, after the error line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def cli_entry(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap a ``main(argv)``: PirlInputError (argparse's errors included) -> ``error: <message>`` on stderr, the
    last line (progress bars closed first), and exit code 2; run locks taken inside are released."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        setup_logging()
        try:
            with run_lock.scope(), _one_line_argument_errors():
                return int(main(argv) or 0)
        except BaseException as err:
            close_progress_bars()
            if not isinstance(err, PirlInputError):
                raise
            print(f"\nerror: {err}", file=sys.stderr)  # newline: a progress bar may be mid-line
            return 2

    return wrapper


def checked(kind: type, allowed: str, test: Callable[[Any], bool]) -> Callable[[str], Any]:
    """An argparse ``type``: ``kind(text)`` when ``test`` accepts it, else an error naming ``allowed``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not test(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}")
        return value

    parse.__name__ = allowed
    return parse


positive_int = checked(int, "a whole number > 0", lambda v: v > 0)
non_negative_int = checked(int, "a whole number >= 0", lambda v: v >= 0)
positive_float = checked(float, "a finite number > 0", lambda v: math.isfinite(v) and v > 0)
patch_side = checked(int, "a positive multiple of 32", lambda v: v > 0 and v % 32 == 0)
feature_size = checked(int, "a positive multiple of 12", lambda v: v > 0 and v % 12 == 0)


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
