# SPDX-License-Identifier: Apache-2.0
"""Tokenizer and parser for LVM2 metadata text (the libdm-config grammar).

::

    file     := item*
    item     := key '{' item* '}' | key '=' value
    key      := word | string
    value    := string | number | word | '[' [ value (',' value)* [','] ] ']'
    string   := '"' (char | '\\' char)* '"' | "'" char* "'"
    comment  := '#' to end of line, outside strings

Sections become ``dict`` (insertion ordered), lists become ``list``, numbers ``int`` (or
``float`` when written with a dot or an exponent), strings and bare words ``str``. Nesting
depth and list length are bounded: the input is hostile.

Repeated keys, as lvm2 2.03 treats them (checked with ``vgs`` on crafted PVs): a repeated value
keeps the *first* one (lvm2 warns "Ignoring duplicate config node" and reads the first); a
repeated section (two ``lv0 { }``, two ``segment1 { }``, two ``pv0 { }``) is conflicting metadata
and refused: lvm2 fails to read such a VG (or calls it an internal error), it never merges them.
"""

from __future__ import annotations

import re

from ..errors import FormatError

Value = int | float | str | list["Value"]
Section = dict[str, "Section | Value"]

MAX_DEPTH = 32  # lvm2 metadata nests 5 deep (vg/logical_volumes/lv/segment); room for growth
MAX_LIST = 1 << 20  # a stripes/raids list of a huge VG has thousands of items, never a million
# 2**64 has 20 digits; a longer numeral is garbage (and int() of a huge one is slow)
MAX_NUMBER_CHARS = 64

_TOKEN = re.compile(
    r"""
      (?P<ws>[ \t\r\n\f\v]+)
    | (?P<comment>\#[^\n]*)
    | (?P<dstr>"(?:[^"\\]|\\.)*")
    | (?P<sstr>'[^']*')
    | (?P<punct>[{}\[\],=])
    | (?P<word>[^ \t\r\n\f\v{}\[\],="'\#]+)
    """,
    re.X | re.S,
)
_INT = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F]+|[0-9]+)\Z")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z|[+-]?[0-9]+[eE][+-]?[0-9]+\Z")
_ESCAPE = re.compile(r"\\(.)", re.S)

# token kinds
_STR, _WORD, _PUNCT, _END = "string", "word", "punct", "end"


class _Tokens:
    def __init__(self, text: str, path: str | None, base: int | None) -> None:
        self.text = text
        self.path = path
        self.base = base
        self.pos = 0
        self.kind = _END
        self.value = ""
        self.start = 0
        self.next()

    def error(self, msg: str, at: int | None = None) -> FormatError:
        at = self.start if at is None else at
        line = self.text.count("\n", 0, at) + 1
        off = None if self.base is None else self.base + at
        return FormatError(f"metadata text line {line}: {msg}", self.path, off)

    def next(self) -> None:
        text = self.text
        while True:
            if self.pos >= len(text):
                self.kind, self.value, self.start = _END, "", self.pos
                return
            m = _TOKEN.match(text, self.pos)
            if m is None:
                ch = text[self.pos]
                what = "unterminated string" if ch in "\"'" else f"unexpected character {ch!r}"
                raise self.error(what, self.pos)
            self.start, self.pos = self.pos, m.end()
            group = m.lastgroup
            if group in ("ws", "comment"):
                continue
            tok = m.group()
            if group == "dstr":
                self.kind, self.value = _STR, _ESCAPE.sub(r"\1", tok[1:-1])
            elif group == "sstr":
                self.kind, self.value = _STR, tok[1:-1]
            elif group == "punct":
                self.kind, self.value = _PUNCT, tok
            else:
                self.kind, self.value = _WORD, tok
            return

    def expect(self, punct: str) -> None:
        if self.kind != _PUNCT or self.value != punct:
            raise self.error(f"expected {punct!r}, found {self.describe()}")
        self.next()

    def describe(self) -> str:
        if self.kind == _END:
            return "end of text"
        return f"{self.kind} {self.value!r}"


def parse(text: str, path: str | None = None, base: int | None = None) -> Section:
    """Parse metadata ``text``; errors name ``path`` and ``base`` + the byte where it broke."""
    toks = _Tokens(text, path, base)
    root = _items(toks, 0)
    if toks.kind != _END:
        raise toks.error(f"unexpected {toks.describe()}")
    return root


def _items(toks: _Tokens, depth: int) -> Section:
    if depth > MAX_DEPTH:
        raise toks.error(f"sections nested deeper than {MAX_DEPTH}")
    out: Section = {}
    while toks.kind in (_WORD, _STR):
        key, at = toks.value, toks.start
        toks.next()
        value: Section | Value
        if toks.kind == _PUNCT and toks.value == "{":
            toks.next()
            value = _items(toks, depth + 1)
            toks.expect("}")
        elif toks.kind == _PUNCT and toks.value == "=":
            toks.next()
            value = _value(toks)
        else:
            raise toks.error(f"expected '=' or '{{' after {key!r}, found {toks.describe()}")
        if key in out:
            if isinstance(value, dict) or isinstance(out[key], dict):
                raise toks.error(f"section {key!r} appears twice (conflicting metadata)", at)
            continue  # the first value counts, as in lvm2
        out[key] = value
    return out


def _value(toks: _Tokens) -> Value:
    if toks.kind == _STR:
        v: Value = toks.value
        toks.next()
        return v
    if toks.kind == _WORD:
        v = _scalar(toks)
        toks.next()
        return v
    if toks.kind == _PUNCT and toks.value == "[":
        toks.next()
        items: list[Value] = []
        while not (toks.kind == _PUNCT and toks.value == "]"):
            if toks.kind == _STR:
                items.append(toks.value)
            elif toks.kind == _WORD:
                items.append(_scalar(toks))
            else:
                raise toks.error(f"expected a list item or ']', found {toks.describe()}")
            if len(items) > MAX_LIST:
                raise toks.error(f"list longer than {MAX_LIST} items")
            toks.next()
            if toks.kind == _PUNCT and toks.value == ",":
                toks.next()
            elif not (toks.kind == _PUNCT and toks.value == "]"):
                raise toks.error(f"expected ',' or ']' in list, found {toks.describe()}")
        toks.next()
        return items
    raise toks.error(f"expected a value, found {toks.describe()}")


def _scalar(toks: _Tokens) -> Value:
    word = toks.value
    if len(word) > MAX_NUMBER_CHARS and (_INT.match(word) or _FLOAT.match(word)):
        raise toks.error(f"number of {len(word)} characters is out of range")
    if _INT.match(word):
        return int(word, 0) if word.lstrip("+-")[:2].lower() == "0x" else int(word, 10)
    if _FLOAT.match(word):
        return float(word)
    return word
