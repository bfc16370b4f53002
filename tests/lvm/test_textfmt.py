# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from euca2kvm.errors import Euca2kvmError, FormatError
from euca2kvm.lvm.textfmt import MAX_DEPTH, parse


def test_sections_values_and_lists() -> None:
    text = (
        'vg {\nid = "a-b"\nseqno = 12\nextent_size = 8192\nstatus = ["READ", "WRITE"]\n'
        'stripes = [\n"pv0", 0,\n"pv1", 25\n]\nf = 1.5\nw = bareword\n'
        "physical_volumes {\npv0 {\npe_start = 2048\n}\n}\n}\n"
        'contents = "Text Format Volume Group"\nversion = 1\n'
    )
    root = parse(text)
    vg = root["vg"]
    assert isinstance(vg, dict)
    assert vg["id"] == "a-b"
    assert vg["seqno"] == 12
    assert vg["status"] == ["READ", "WRITE"]
    assert vg["stripes"] == ["pv0", 0, "pv1", 25]
    assert vg["f"] == 1.5
    assert vg["w"] == "bareword"
    assert vg["physical_volumes"] == {"pv0": {"pe_start": 2048}}
    assert root["version"] == 1


def test_comments_only_outside_strings() -> None:
    text = 'a = "x # not a comment"  # a comment "with quotes\nb = 2 # trailing\n# whole line\nc = [1, # in list\n 2]\n'
    assert parse(text) == {"a": "x # not a comment", "b": 2, "c": [1, 2]}


def test_escapes_in_strings() -> None:
    assert parse(r'a = "q\"uote\\back"') == {"a": 'q"uote\\back'}
    assert parse("a = 'single \\ raw'") == {"a": "single \\ raw"}


def test_creation_host_line_as_lvm_writes_it() -> None:
    text = 'creation_host = "host"\t# Linux host 6.1.0 #1 SMP PREEMPT_DYNAMIC Debian x86_64\ncreation_time = 1\n'
    assert parse(text) == {"creation_host": "host", "creation_time": 1}


def test_duplicate_key_first_wins_and_type_flags_kept() -> None:
    # lvm2 2.03.16 on a PV whose segment says extent_count twice: "Ignoring duplicate config node",
    # and lvs shows the size of the first value.
    assert parse('a = 1\na = 2\ntype = "raid1+RESHAPE"') == {"a": 1, "type": "raid1+RESHAPE"}


@pytest.mark.parametrize("text, key", [("lv0 {\n}\nlv0 {\na = 1\n}", "lv0"), ("a {\nseg {\n}\nseg {\n}\n}", "seg"),
                                       ("a = 1\na {\n}", "a"), ("a {\n}\na = 1", "a")])
def test_repeated_section_is_refused_where_it_repeats(text: str, key: str) -> None:
    with pytest.raises(FormatError) as ei:
        parse(text, "/pv", 1000)
    assert ei.value.path == "/pv" and ei.value.offset == 1000 + text.rindex(key)


def test_numbers() -> None:
    assert parse("a = -5\nb = +7\nc = 0x10\nd = 1e3\ne = 007") == {"a": -5, "b": 7, "c": 16, "d": 1000.0, "e": 7}


def test_quoted_keys() -> None:
    assert parse('"odd#key" = 1') == {"odd#key": 1}


@pytest.mark.parametrize(
    "bad, what",
    [
        ('a = "unterminated', "unterminated string"),
        ("a = [1, 2", "expected ',' or ']'"),
        ("a = [1,", "expected a list item"),
        ("a {\nb = 1\n", "expected '}'"),
        ("a = ", "expected a value"),
        ("a b", "expected '=' or '{'"),
        ("a = [1 2]", "expected ',' or ']'"),
        ("= 1", "unexpected"),
        ("a = " + "9" * 100, "out of range"),
    ],
)
def test_errors_name_line_and_offset(bad: str, what: str) -> None:
    with pytest.raises(FormatError) as ei:
        parse(bad, "/x/pv", 4096)
    assert what in str(ei.value)
    assert "/x/pv" in str(ei.value)
    assert ei.value.offset is not None and ei.value.offset >= 4096


def test_depth_bound() -> None:
    deep = "a {" * (MAX_DEPTH + 5) + "}" * (MAX_DEPTH + 5)
    with pytest.raises(FormatError, match="nested deeper"):
        parse(deep)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('ab01 ={}[],"#\\\'\n\t-+.x')), max_size=200))
def test_fuzz_grammar_characters(text: str) -> None:
    with contextlib.suppress(Euca2kvmError):
        parse(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_any_text(text: str) -> None:
    with contextlib.suppress(Euca2kvmError):
        parse(text)
