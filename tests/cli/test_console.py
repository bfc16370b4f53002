# SPDX-License-Identifier: Apache-2.0
"""The rich-free console path prints exactly what rich prints to a non-terminal, and both print
unsafe characters only as visible escapes."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import subprocess
import sys
import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.errors import MarkupError
from rich.markup import escape as rich_escape

from euca2kvm.cli.console import (
    LINE_BREAK,
    UNSAFE_RANGES,
    LazyConsole,
    VisibleFormatter,
    _visible_console,
    escape,
    plain,
    visible,
)

# Characters that matter to markup and to rich's text handling, plus ordinary ones. The alphabet
# without tabs is spelled out: `text(sampled_from(...).filter(...))` leaves it to hypothesis to
# honour the filter when it turns a sampled alphabet into a character set, and a release that
# resolved the alphabet from the sampled elements alone let tabs through.
CHARS = "[]\\/=#@ab Z:09-_.\t\r\n\x07\x1b\u00e9\u4e2d"
ALPHABET = st.sampled_from(list(CHARS))
TEXT = st.text(ALPHABET, max_size=40)
NO_TAB = st.text(st.sampled_from([c for c in CHARS if c != "\t"]), max_size=40)  # rich prints tabs itself
# Anything, unsafe characters (C1 CSI, bidi overrides, zero-width, lone surrogates, tags) and
# the escape's own letters often.
HOSTILE = st.text(st.one_of(st.characters(codec=None, exclude_categories=()),
                            st.sampled_from(list("\\xuU[]0a\n\r\t\x1b\x07\x9b\u202e\u2066\u200b\ud800\U000e0041"))),
                  max_size=40)
UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def rich_plain(markup: str) -> str:
    buf = io.StringIO()
    Console(file=buf, width=200, soft_wrap=True, highlight=False, emoji=False, force_terminal=False,
            color_system=None).print(markup)
    out = buf.getvalue()
    assert out.endswith("\n")
    return out[:-1]


@settings(max_examples=2000, deadline=None)
@given(TEXT)
def test_escape_matches_rich(text: str) -> None:
    assert escape(text) == rich_escape(text)


@settings(max_examples=2000, deadline=None)
@given(NO_TAB, NO_TAB)
def test_plain_matches_rich_for_escaped_text_in_tags(a: str, b: str) -> None:
    markup = f"[bold red]euca2kvm: error:[/] {escape(a)} [yellow]{escape(b)}[/yellow]"
    assert plain(markup) == rich_plain(markup)


@settings(max_examples=2000, deadline=None)
@given(NO_TAB)
def test_plain_matches_rich_for_raw_markup(markup: str) -> None:
    try:
        want = rich_plain(markup)
    except MarkupError:
        return  # malformed markup: rich refuses it; the project only prints escaped text
    assert plain(markup) == want


def test_lazy_console_writes_plain_text_to_a_pipe(capsys: pytest.CaptureFixture[str]) -> None:
    c = LazyConsole()
    c.print("[green]ok[/] vol-1 \\[x]")
    assert capsys.readouterr().out == "ok vol-1 [x]\n"
    assert not c.is_terminal
    c.print("a\tb\u4e2d\tc\r")  # a tab is a control character like the others
    assert capsys.readouterr().out == "a\\x09b\u4e2d\\x09c\\x0d\n"


def unescape(shown: str) -> str:
    """The inverse of ``visible``: an odd run of backslashes before x/u/U ends in an escape."""
    sizes = {"x": 2, "u": 4, "U": 8}

    def one(m: re.Match[str]) -> str:
        run, letter, digits = m.group(1), m.group(2), m.group(3)
        if len(run) % 2 == 0:
            return run[: len(run) // 2] + letter + digits
        return run[: len(run) // 2] + chr(int(digits[: sizes[letter]], 16)) + digits[sizes[letter] :]

    return re.sub(r"(\\+)([xuU])([0-9a-f]{0,8})", one, shown)


@settings(max_examples=1000, deadline=None)
@given(HOSTILE)
def test_visible_leaves_no_unsafe_character_and_is_injective(text: str) -> None:
    shown = visible(text)
    assert not [c for c in shown if unicodedata.category(c) in UNSAFE_CATEGORIES], ascii(shown)
    assert unescape(shown) == text  # injective: the text is recovered from what is shown
    kept = visible(text, LINE_BREAK)
    assert not [c for c in kept if c != "\n" and unicodedata.category(c) in UNSAFE_CATEGORIES]
    assert kept.split("\n") == [visible(line) for line in text.split("\n")]
    if "\\" not in text and not [c for c in text if unicodedata.category(c) in UNSAFE_CATEGORIES]:
        assert shown == text  # readable: printable text, CJK included, is left as it is


def test_visible_examples() -> None:
    assert visible("\x1b]0;x\x07\x1b[2J\x9b2J") == "\\x1b]0;x\\x07\\x1b[2J\\x9b2J"
    assert (visible("a\u202eb\u2066\u200b\ud800\U000e0041 \u4e2d\u00e9")
            == "a\\u202eb\\u2066\\u200b\\ud800\\U000e0041 \u4e2d\u00e9")
    assert visible("C:\\x1b") == "C:\\\\x1b" != visible("C:\x1b")  # a literal escape is told apart
    assert visible("C:\\path\\Users") == "C:\\path\\\\Users"


def test_unsafe_ranges_cover_unicodedata() -> None:
    listed = {c for a, b in UNSAFE_RANGES for c in range(a, b + 1)}
    unsafe = {c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in UNSAFE_CATEGORIES}
    assert unsafe <= listed, [hex(c) for c in sorted(unsafe - listed)][:20]
    extra = {unicodedata.category(chr(c)) for c in listed - unsafe}
    assert extra <= {"Cn"}, extra  # only code points this Python's Unicode has not assigned yet
    assert not [c for c in listed if chr(c).isprintable()]  # what visible's fast path relies on


def rich_console(terminal: bool) -> Any:
    """The console ``LazyConsole.real`` makes, writing to a buffer, as for a pipe or a terminal."""
    return _visible_console()(file=io.StringIO(), force_terminal=terminal, color_system="truecolor" if terminal
                              else None, width=200, soft_wrap=True, highlight=False, emoji=False)


@settings(max_examples=500, deadline=None)
@given(HOSTILE, HOSTILE)
def test_printed_text_is_visible_on_both_paths(a: str, b: str) -> None:
    """The plain path and rich, for a pipe and a terminal, show markup with raw data exactly as plain rich
    shows it with the data escaped first: no command has to escape anything but markup."""
    markup = f"[bold red]x:[/] {escape(a)} [yellow]{escape(b)}[/]"
    want = rich_plain(f"[bold red]x:[/] {escape(visible(a, LINE_BREAK))} [yellow]{escape(visible(b, LINE_BREAK))}[/]")
    want += "\n"
    assert not [c for c in want if c != "\n" and unicodedata.category(c) in UNSAFE_CATEGORIES]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        LazyConsole().print(markup)
    assert buf.getvalue() == want
    for terminal in (False, True):
        c = rich_console(terminal)
        c.print(markup)
        shown = re.sub(r"\x1b\[[0-9;]*m", "", c.file.getvalue())  # rich's own colours, on a terminal
        assert shown == want


def test_table_cells_title_and_headers_are_visible() -> None:
    from rich.table import Table

    real = rich_console(True)
    t = Table(title="t\x1b]0;x\x07")
    t.add_column("h\u202e")
    t.add_row("vg\x1b[2J\x9b2J/lv\r")
    real.print(t)
    out = real.file.getvalue()
    for raw in ("\x1b]", "\x07", "\u202e", "\x1b[2J", "\x9b", "\r"):
        assert raw not in out
    for shown in ("t\\x1b]0;x\\x07", "h\\u202e", "vg\\x1b[2J\\x9b2J/lv\\x0d"):
        assert shown in out


def test_log_records_are_visible() -> None:
    f = VisibleFormatter("%(name)s: %(message)s")
    try:
        raise ValueError("bad \x1b[2J")
    except ValueError:
        rec = logging.LogRecord("euca2kvm", logging.ERROR, __file__, 1, "vg %s\n", ("\x1b]0;x\x07",), sys.exc_info())
    out = f.format(rec)
    assert out.startswith("euca2kvm: vg \\x1b]0;x\\x07\\x0a\nTraceback")  # the record on one line
    assert "\x1b" not in out and "bad \\x1b[2J" in out


def test_plain_output_does_not_import_rich() -> None:
    code = ("import sys; from euca2kvm.cli.common import console, console_err, esc\n"
            "console.print('[bold]x[/] ' + esc('[y]')); console_err.print('e')\n"
            "assert not [m for m in sys.modules if m.startswith('rich')], sorted(sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stdout, p.stderr) == (0, "x [y]\n", "e\n")


def test_forced_colour_goes_through_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    c = LazyConsole()
    assert c.is_terminal
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buf)
    c.print("[red]x[/]")
    assert "\x1b[" in buf.getvalue()  # rich rendered colour codes
