"""Every name a benchmark script's functions read is defined: the scripts run for minutes before they save a
result, so a name left behind by a refactor (methods.py once ended in a NameError after its training) must
fail here, in seconds, not at the end of a benchmark run."""

from __future__ import annotations

import builtins
import symtable
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def _undefined_globals(source: str, filename: str) -> set[str]:
    """Names that functions (at any depth) read as globals but that the module neither defines, imports nor has as a
    builtin."""
    module = symtable.symtable(source, filename, "exec")
    defined = (
        {symbol.get_name() for symbol in module.get_symbols() if symbol.is_assigned() or symbol.is_imported()}
        | set(dir(builtins))
        | {"__file__", "__name__", "__doc__"}
    )
    undefined, tables = set(), list(module.get_children())
    while tables:
        table = tables.pop()
        tables.extend(table.get_children())
        if table.get_type() == "function":
            undefined |= {
                symbol.get_name() for symbol in table.get_symbols() if symbol.is_global() and symbol.is_referenced()
            } - defined
    return undefined


@pytest.mark.parametrize("script", BENCHMARKS, ids=[path.name for path in BENCHMARKS])
def test_benchmark_functions_read_only_defined_names(script):
    assert _undefined_globals(script.read_text(), str(script)) == set()


def test_the_check_finds_a_name_nothing_defines():
    assert _undefined_globals("import os\ndef f():\n    return os.sep + missing_name\n", "example.py") == {
        "missing_name"
    }
