"""The console every alloynet command prints through.

On a terminal it is Rich (colour, tables, progress bars). Anywhere else (a pipe, a file, CI logs, a script
reading the output) lines come out plain and whole: Rich would otherwise wrap them at 80 columns, breaking
an error message with a long path in the middle, and a script would read broken lines.
"""
from __future__ import annotations

from rich.console import Console, ConsoleDimensions

PLAIN_WIDTH = 10_000  # wide enough that no line or table is ever wrapped when not on a terminal


def printable(value: object) -> str:
    """``value`` as text safe to print: every character that is not printable (terminal escapes, newlines,
    bidirectional overrides, NUL) is shown as its Python escape, so a name that came from outside (an
    object key, a capture id, a file name, a reason quoting them) can neither fake an output line nor
    drive the terminal."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class CliConsole(Console):
    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, **kwargs)  # print() never inserts line breaks of its own

    @property
    def size(self) -> ConsoleDimensions:
        if self.is_terminal:
            return super().size
        return ConsoleDimensions(PLAIN_WIDTH, super().size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)

    def log(self, *objects, **kwargs) -> None:
        """On a terminal Rich's log line (time, message, source); elsewhere ``[HH:MM:SS] message``: Rich pads
        its log lines to the console width, which off a terminal is PLAIN_WIDTH columns of spaces."""
        if self.is_terminal:
            return super().log(*objects, _stack_offset=2, **kwargs)
        from datetime import datetime

        self.print(f"[{datetime.now():%H:%M:%S}]", *objects, **{k: v for k, v in kwargs.items()
                                                                 if k in ("sep", "end", "style", "markup")})


def make_console(stderr: bool = False) -> CliConsole:
    return CliConsole(stderr=stderr)
