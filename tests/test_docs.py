"""The README is short, says what is (no history), shows the two set-up commands, and its results come from
committed files; the configuration reference matches the dataclasses; every file the docs name exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from benchmarks.readme_tables import _shared_machine

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_read_in_five_minutes_and_shows_exactly_two_set_up_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    setup = readme.split("## Set up and run", 1)[1].split("```", 2)[1]
    assert [line.split("#")[0].strip() for line in setup.splitlines()[1:] if line.strip()] == ["make run", "make test"]


def test_the_docs_say_what_is_not_what_was():
    history = re.compile(
        r"\bissue \d+|\bissue #\d+|the run before|earlier runs?\b|this session|used to be|in git history", re.IGNORECASE
    )
    for document in DOCUMENTS:
        hits = [line for line in document.read_text().splitlines() if history.search(line)]
        assert not hits, f"{document.relative_to(ROOT)}: {hits[:3]}"


def test_every_path_the_docs_name_exists():
    named = re.compile(
        r"`((?:docs|benchmarks|tests|ssl_models|sslflow|tasks|workflows|images)/[\w./-]+\.(?:py|md|json|txt))`"
    )
    for document in DOCUMENTS:
        missing = [
            path for path in named.findall(document.read_text()) if "*" not in path and not (ROOT / path).exists()
        ]
        assert not missing, f"{document.relative_to(ROOT)} names files that do not exist: {missing}"


def test_the_readme_results_are_generated_from_committed_results():
    completed = subprocess.run(
        [sys.executable, "benchmarks/readme_tables.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr


def test_the_configuration_reference_matches_the_dataclasses():
    completed = subprocess.run(
        [sys.executable, "docs/generate_configuration.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr


def test_a_make_run_time_taken_on_a_shared_machine_says_so():
    assert _shared_machine("2-core x86_64 CPU, cpu", "2.1, 4.2, 6.2").startswith(" (taken while other work shared")
    assert _shared_machine("2-core x86_64 CPU, cpu", "1.0, 1.2, 1.9") == ""
    assert _shared_machine("2-core x86_64 CPU, cpu", "?") == ""
