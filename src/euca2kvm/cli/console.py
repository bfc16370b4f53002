# SPDX-License-Identifier: Apache-2.0
"""Consoles that import rich only when they need it.

Importing rich costs about 45 ms, a quarter of the run time of a small export. Text written to
a pipe or a file (scripts, logs, CI) does not need it: markup tags are dropped and escapes
resolved exactly as rich renders them for a non-terminal (tested against rich itself). Tables,
terminals and colours forced by the environment go to a real ``rich.console.Console``, created
on first use.

Everything printed for people passes ``visible`` on its way out (``LazyConsole.print`` for the
plain path, ``render_str`` of the rich console for everything rich renders from a string, the
log formatter): names read from containers, guest disks and remote hosts can hold terminal
escapes, and no command has to remember to neutralise them. ``--json`` output is left to
``json.dumps``, which writes every control and non-ASCII character as a ``\\uXXXX`` escape.
"""

from __future__ import annotations

import functools
import logging
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
# Characters written as escapes by ``visible``: Unicode categories Cc (C0 controls, DEL, C1
# controls such as U+009B, the one-byte CSI), Cf (format characters: the bidi embeddings,
# overrides and isolates U+202A-U+202E and U+2066-U+2069 that reorder what a line shows, the
# marks U+200E/U+200F/U+061C, zero-width space/joiners U+200B-U+200D, U+2060, U+FEFF, soft
# hyphen, tag characters U+E0000-U+E007F that hide text), Cs (lone surrogates: file names that
# are not UTF-8, which would also make the write fail) and Zl/Zp (U+2028/U+2029, line breaks to
# some terminals). Zero-width characters are escaped too: they do not move the cursor, but two
# names that differ by one look alike, and LVM names cannot hold the scripts that need ZWJ/ZWNJ.
# Printable Unicode (CJK, accents, emoji without joiners) stays as it is. The ranges are those of
# Unicode 14 (Python 3.11), plus U+13439-U+1343F made format characters by Unicode 15; the tests
# check them against the running Python's unicodedata.
UNSAFE_RANGES = (
    (0x0000, 0x001F), (0x007F, 0x009F), (0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C),
    (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2), (0x180E, 0x180E),
    (0x200B, 0x200F), (0x2028, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F), (0xD800, 0xDFFF),
    (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001), (0xE0020, 0xE007F),
)
_UNSAFE = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in UNSAFE_RANGES)
# Line breaks kept by the output layer: a message's own lines (a guest's serial console, a
# report) cannot be told from a line break inside a name once they are joined in one string.
LINE_BREAK = "\n"
# Piped output is read by people too (logs, mails): do not fold tables to 80 columns.
PIPE_WIDTH = 200


@functools.lru_cache(maxsize=8)
def _visible_re(keep: str) -> re.Pattern[str]:
    unsafe = f"(?![{re.escape(keep)}])[{_UNSAFE}]" if keep else f"[{_UNSAFE}]"
    # A run of backslashes before "x", "u", "U" or an escaped character is doubled, so that a
    # name holding the four characters "\\x1b" prints differently from one holding ESC.
    return re.compile(f"\\\\+(?=[xuU]|{unsafe})|{unsafe}")


def _escape_one(m: re.Match[str]) -> str:
    s = m.group()
    if s[0] == "\\":
        return s + s
    code = ord(s)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: str, keep: str = "") -> str:
    """``text`` safe to show on a terminal: unsafe characters (``UNSAFE_RANGES``) but those in
    ``keep`` become Python-style escapes (ESC -> ``\\x1b``, U+202E -> ``\\u202e``), everything
    else is left as it is.

    Injective: a run of backslashes followed by ``x``, ``u``, ``U`` or an escape is doubled, so
    an odd run before ``x``/``u``/``U`` always starts an escape and an even one never does. Markup
    stays markup: nothing is inserted before a ``[`` or changed in a backslash run before one.
    Applied once, by the output layer: text printed through a console must not be passed through
    it first, or its escapes would show doubled.
    """
    if text.isprintable() and "\\" not in text:  # the common case, in C: every unsafe character is unprintable
        return text
    return _visible_re(keep).sub(_escape_one, text)


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
        """The rich Console (created on first use), which passes every string it renders through ``visible``."""
        if self._real is None:
            width = None if self._stderr or is_terminal(self.stream) else PIPE_WIDTH
            self._real = _visible_console()(stderr=self._stderr, highlight=False, soft_wrap=True, emoji=False,
                                            width=width)
        return self._real

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if (self._real is None and set(kwargs) <= {"highlight"}
                and all(isinstance(o, str) for o in objects) and not is_terminal(self.stream)):
            stream = self.stream
            stream.write(" ".join(plain(visible(o, LINE_BREAK)) for o in objects) + "\n")
            stream.flush()
            return
        self.real().print(*objects, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)


@functools.cache
def _visible_console() -> type:
    """A ``rich.console.Console`` whose ``render_str`` (every string rich renders: printed text, table
    cells, titles and headers) escapes unsafe characters before markup is parsed and widths are measured."""
    from rich.console import Console
    from rich.text import Text

    class VisibleConsole(Console):
        def render_str(self, text: str, **kwargs: Any) -> Text:
            return super().render_str(visible(text, LINE_BREAK), **kwargs)

    return VisibleConsole


class VisibleFormatter(logging.Formatter):
    """Log records as ``logging.Formatter`` writes them, through ``visible``: a record's message on
    one line, tracebacks keeping their own line breaks."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return visible(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:  # noqa: N802
        return visible(super().formatException(ei), LINE_BREAK)

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return visible(super().formatStack(stack_info), LINE_BREAK)
