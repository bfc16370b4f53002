# SPDX-License-Identifier: Apache-2.0
"""Consoles that import rich only when they need it.

Importing rich costs about 45 ms, a quarter of the run time of a small export. Text written to
a pipe or a file (scripts, logs, CI) does not need it: markup tags are dropped and escapes
resolved exactly as rich renders them for a non-terminal (tested against rich itself). Tables,
terminals and colours forced by the environment go to a real ``rich.console.Console``, created
on first use.
"""

from __future__ import annotations

import os
import re
import sys
from typing import IO, Any

# rich.markup's tag syntax: optional backslashes, "[", a letter, "#", "/" or "@", up to the first "]"
# with no "[" in between (rich.markup.RE_TAGS).
_TAG = re.compile(r"((\\*)\[([a-z#/@][^[]*?)])")
_ESCAPE = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")
# Control characters rich removes from text (rich.control.STRIP_CONTROL_CODES): bell,
# backspace, vertical tab, form feed, carriage return.
_STRIP = str.maketrans("", "", "\x07\x08\x0b\x0c\x0d")
# Piped output is read by people too (logs, mails): do not fold tables to 80 columns.
PIPE_WIDTH = 200


def escape(text: str) -> str:
    """Escape ``text`` so that rich prints it literally (same result as ``rich.markup.escape``)."""

    def one(m: re.Match[str]) -> str:
        backslashes, tag = m.groups()
        return f"{backslashes}{backslashes}\\{tag}"

    text = _ESCAPE.sub(one, text)
    if text.endswith("\\") and not text.endswith("\\\\"):
        return text + "\\"
    return text


def plain(markup: str) -> str:
    """The text rich prints for ``markup`` on a non-terminal: tags dropped, escapes resolved.

    Not for text with tabs: rich expands those by display cell width (see ``LazyConsole.print``).
    """
    if "[" not in markup:
        return markup.translate(_STRIP)
    out: list[str] = []
    pos = 0
    for m in _TAG.finditer(markup):
        full, escapes, _ = m.groups()
        start, end = m.span()
        out.append(markup[pos:start].replace("\\[", "["))  # a backslash before a "[" that opens no tag
        pos = end
        if escapes:
            backslashes, escaped = divmod(len(escapes), 2)
            out.append("\\" * backslashes)
            if escaped:
                out.append(full[len(escapes) :])
    out.append(markup[pos:].replace("\\[", "["))
    return "".join(out).translate(_STRIP)


def is_terminal(stream: IO[str]) -> bool:
    """Whether rich would treat ``stream`` as a terminal (its environment overrides included)."""
    env = os.environ
    if env.get("TTY_COMPATIBLE") in ("0", "1"):
        return env["TTY_COMPATIBLE"] == "1"
    if env.get("FORCE_COLOR") is not None:
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # closed
        return False


class LazyConsole:
    """``print`` of plain strings to a pipe or file without rich; anything else through rich."""

    def __init__(self, stderr: bool = False) -> None:
        self._stderr = stderr
        self._real: Any = None

    @property
    def stream(self) -> IO[str]:
        return sys.stderr if self._stderr else sys.stdout

    @property
    def is_terminal(self) -> bool:
        return bool(self._real.is_terminal) if self._real is not None else is_terminal(self.stream)

    def real(self) -> Any:
        """The rich Console (created on first use)."""
        if self._real is None:
            from rich.console import Console

            width = None if self._stderr or is_terminal(self.stream) else PIPE_WIDTH
            self._real = Console(stderr=self._stderr, highlight=False, soft_wrap=True, emoji=False, width=width)
        return self._real

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if (self._real is None and set(kwargs) <= {"highlight"}
                and all(isinstance(o, str) and "\t" not in o for o in objects) and not is_terminal(self.stream)):
            stream = self.stream
            stream.write(" ".join(plain(o) for o in objects) + "\n")
            stream.flush()
            return
        self.real().print(*objects, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)
