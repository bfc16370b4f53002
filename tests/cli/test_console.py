# SPDX-License-Identifier: Apache-2.0
"""The rich-free console path prints exactly what rich prints to a non-terminal."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.errors import MarkupError
from rich.markup import escape as rich_escape

from euca2kvm.cli.console import LazyConsole, escape, plain

# Characters that matter to markup and to rich's text handling, plus ordinary ones.
ALPHABET = st.sampled_from(list("[]\\/=#@ab Z:09-_.\t\r\n\x07\x1b\u00e9\u4e2d"))
TEXT = st.text(ALPHABET, max_size=40)
NO_TAB = st.text(ALPHABET.filter(lambda c: c != "\t"), max_size=40)  # tabs are printed by rich itself


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
    c.print("a\tb\u4e2d\tc")  # tabs: expanded by rich, by display width
    assert capsys.readouterr().out == rich_plain("a\tb\u4e2d\tc") + "\n"


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
