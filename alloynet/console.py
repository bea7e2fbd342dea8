"""The console every alloynet command prints through.

On a terminal it is Rich (colour, tables, progress bars). Anywhere else (a pipe, a file, CI logs, a script
reading the output) lines come out plain and whole: Rich would otherwise wrap them at 80 columns, breaking
an error message with a long path in the middle, and a script would read broken lines. Tables come out as
aligned text without box drawing (``plain_table``) and progress bars are left out (``show_progress``).
"""

from __future__ import annotations

from rich.console import Console, ConsoleDimensions
from rich.table import Table
from rich.text import Text

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

    def print(self, *objects, **kwargs) -> None:
        """Rich's print; off a terminal a Table is printed as ``plain_table`` text."""
        if not self.is_terminal and any(isinstance(o, Table) for o in objects):
            objects = tuple(plain_table(o) if isinstance(o, Table) else o for o in objects)
            kwargs = {**kwargs, "markup": False, "highlight": False}
        super().print(*objects, **kwargs)

    @property
    def show_progress(self) -> bool:
        """Whether progress bars are drawn: on a terminal only (a pipe would get every redraw)."""
        return self.is_terminal

    def log(self, *objects, **kwargs) -> None:
        """On a terminal Rich's log line (time, message, source); elsewhere ``[HH:MM:SS] message``: Rich pads
        its log lines to the console width, which off a terminal is PLAIN_WIDTH columns of spaces."""
        if self.is_terminal:
            return super().log(*objects, _stack_offset=2, **kwargs)
        from datetime import datetime

        self.print(
            f"[{datetime.now():%H:%M:%S}]",
            *objects,
            **{k: v for k, v in kwargs.items() if k in ("sep", "end", "style", "markup")},
        )


def _cell_text(cell: object) -> str:
    if isinstance(cell, Text):
        return cell.plain
    return Text.from_markup(str(cell)).plain if isinstance(cell, str) else str(cell)


def plain_table(table: Table) -> str:
    """``table`` as aligned plain text: its title, then the header and one line per row, columns separated by
    two spaces and padded to their widest cell (right-aligned where the column is), no box drawing."""
    columns = [[_cell_text(c.header), *(_cell_text(x) for x in c._cells)] for c in table.columns]
    widths = [max(len(x) for x in col) for col in columns]
    lines = [_cell_text(table.title)] if table.title else []
    for i in range(max((len(col) for col in columns), default=0)):
        cells = [
            (col[i].rjust(w) if c.justify == "right" else col[i].ljust(w))
            for col, w, c in zip(columns, widths, table.columns)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(printable(line) for line in lines)


def make_console(stderr: bool = False) -> CliConsole:
    return CliConsole(stderr=stderr)
