"""benchmarks/suite_time.py reads each suite's result from pytest's last line, whatever else the log holds."""

from benchmarks.suite_time import _summary


def test_the_summary_is_pytest_s_last_counts_line(tmp_path):
    log = tmp_path / "make_test.log"
    log.write_text(
        "tests/test_x.py::test_a 3 passed earlier in a test's own output\n"
        "============ 1 failed, 591 passed, 1 skipped, 2 warnings in 916.04s (0:15:16) ============\n"
        "make: *** [Makefile:26: test] Error 1\n"
    )
    assert _summary(log) == {
        "pytest_line": "1 failed, 591 passed, 1 skipped, 2 warnings in 916.04s (0:15:16)",
        "tests": {"failed": 1, "passed": 591, "skipped": 1},
        "pytest_seconds": 916.04,
    }


def test_a_log_without_pytest_s_line_says_so(tmp_path):
    log = tmp_path / "make_test.log"
    log.write_text("ruff check .\nFound 1 error.\n")
    assert _summary(log) == {"pytest_line": None}
