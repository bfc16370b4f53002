# SPDX-License-Identifier: Apache-2.0
"""A :class:`~.model.Report` rendered as one self-contained HTML page or as Markdown, by Jinja2.

HTML: autoescape on, and every value printed also has its control and bidirectional characters
escaped (``visible``) by the environment's ``finalize``, so no template can forget it; the page
loads nothing (a Content-Security-Policy allows only inline style, inline script and data: images).
The escaping function is the caller's (the command line passes ``cli.console.visible``, the one
rule for what a terminal or a page must not see raw), so this layer imports nothing above it.
Markdown: every value is escaped for Markdown by ``finalize`` (backslash before each character
Markdown or an HTML-rendering tracker would interpret, newlines flattened); console lines go in an
indented code block, which their content cannot end.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from typing import Any

import jinja2

from ..units import human
from .model import Report

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
FORMATS = ("html", "md")
# Characters Markdown (CommonMark, GFM tables) or embedded HTML give a meaning anywhere in a line
# (values never start one: the templates put text before each).
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&])")


class CodeLine(str):
    """A console line for a Markdown code block: escaped for the terminal, not for Markdown."""


Escape = Callable[..., str]  # visible(text, keep="") -> text with unsafe characters escaped


def _html_finalize(visible: Escape) -> Callable[[Any], Any]:
    def finalize(value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, jinja2.utils.markupsafe.Markup):
            return value
        return visible(str(value), "\n")  # line breaks stay: console excerpts are <pre>

    return finalize


def _md_finalize(visible: Escape) -> Callable[[Any], str]:
    def finalize(value: Any) -> str:
        if value is None:
            return ""
        text = visible(str(value))  # newlines become \n escapes too: one value, one table cell
        if isinstance(value, CodeLine):
            return text
        return _MD_SPECIAL.sub(r"\\\1", text)

    return finalize


def _size(n: Any) -> str:
    return human(n) if isinstance(n, int) else "—"


def _secs(s: Any) -> str:
    return f"{s:.1f} s" if isinstance(s, int | float) else "—"


@functools.lru_cache(maxsize=2)
def _env(fmt: str, visible: Escape) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, "templates"),
        autoescape=fmt == "html",
        undefined=jinja2.StrictUndefined,
        finalize=(_html_finalize if fmt == "html" else _md_finalize)(visible),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["size"] = _size
    env.filters["secs"] = _secs
    env.filters["codeline"] = CodeLine
    return env


def render(report: Report, fmt: str, visible: Escape) -> str:
    """The report as text in ``fmt`` (``html`` or ``md``); ``visible`` escapes control characters."""
    template = _env(fmt, visible).get_template(f"report.{fmt}.j2")
    return template.render(report=report, counts=report.counts(), csp=CSP,
                           generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
