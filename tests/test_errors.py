# SPDX-License-Identifier: Apache-2.0
"""One exit-code table: errors.EXIT_CODES is what the README and ``--help`` show, and every code the
tool can exit with is in it."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

from euca2kvm import errors

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 60


def _readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("### Exit codes\n")
    end = text.find("\n#", start + 1)
    section = text[start:end]
    return "".join(line + "\n" for line in section.splitlines() if line.startswith("|"))


def test_readme_table_is_the_generated_one() -> None:
    assert _readme_section() == errors.markdown()


def test_module_prints_the_markdown_table() -> None:
    p = subprocess.run([sys.executable, "-m", "euca2kvm.errors", "--markdown"], capture_output=True, text=True,
                       timeout=RUN_TIMEOUT, check=True)
    assert p.stdout == errors.markdown()
    bad = subprocess.run([sys.executable, "-m", "euca2kvm.errors", "--bogus"], capture_output=True, text=True,
                         timeout=RUN_TIMEOUT)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


def test_help_prints_the_same_table() -> None:
    p = subprocess.run([sys.executable, "-m", "euca2kvm", "--help"], capture_output=True, text=True,
                       timeout=RUN_TIMEOUT, check=True)
    squash = re.compile(r"\s+")
    assert squash.sub(" ", errors.epilog()).strip() in squash.sub(" ", p.stdout)


def test_every_exit_code_is_in_the_table() -> None:
    listed = {code for code, _ in errors.EXIT_CODES}
    assert len(listed) == len(errors.EXIT_CODES)  # each code once
    constants = {v for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int)}
    assert constants == listed
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.Euca2kvmError):
            assert cls.exit_code in listed, cls
    assert all(meaning and "\n" not in meaning and "|" not in meaning for _, meaning in errors.EXIT_CODES)
