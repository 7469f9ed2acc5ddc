"""What every command line of the project shares (both halves; no mindspore or torch import here):
numeric flag types that refuse values that cannot work, and how an interruption ends a command.

Interruptions: Ctrl-C raises KeyboardInterrupt; MindSpore (and some launchers) turn it into SIGTERM,
which would end the process without running `finally` blocks, so SIGTERM is made to raise
KeyboardInterrupt too. The command then prints one line saying what was kept and the command line
that continues it, and exits 130 (the shell's code for an interrupted command).
"""
import argparse
import math
import shlex
import signal
import sys
from typing import Callable, Optional, Sequence

EXIT_INTERRUPTED = 130


def _number(kind: Callable, low: Optional[float], allowed: str, strict: bool = False, also: Sequence = ()):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if value in also:
            return value
        if (kind is float and not math.isfinite(value)) or \
                (low is not None and (value <= low if strict else value < low)):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {allowed}")
        return value
    parse.__name__ = allowed  # argparse names the type in its messages
    return parse


positive_int = _number(int, 0, "an integer >= 1", strict=True)
nonnegative_int = _number(int, 0, "an integer >= 0")
positive_float = _number(float, 0, "a number > 0", strict=True)


def int_at_least(low: int, also: Sequence[int] = ()):
    """An integer >= low, or one of `also` (e.g. -1 meaning 'all')."""
    extra = "".join(f" or {v}" for v in also)
    return _number(int, low, f"an integer >= {low}{extra}", also=also)


def sigterm_interrupts() -> None:
    """SIGTERM raises KeyboardInterrupt (in the main thread), so the command's cleanup runs."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def command_line(prog: str, argv: Optional[Sequence[str]] = None, add: Sequence[str] = ()) -> str:
    """The command as the user ran it (argv, default sys.argv[1:]), plus `add` flags not already there."""
    args = list(sys.argv[1:] if argv is None else argv)
    args += [flag for flag in add if flag not in args]
    return f"{prog} {shlex.join(args)}"


def interrupted(message: str) -> int:
    """Prints 'interrupted: MESSAGE' as one line on stderr; returns the exit code to use."""
    print(f"\ninterrupted: {message}", file=sys.stderr)
    # an object the interrupt caught inside its constructor (a progress bar) fails in its finalizer on the
    # way out, and Python would print that traceback ("Exception ignored in ...") after our line
    sys.unraisablehook = lambda unraisable: None
    return EXIT_INTERRUPTED
