"""benchmarks/suite_order.py replays xdist's loadfile scheduling as xdist hands out files, on times read from a pytest
log, in the order conftest.py gives."""

from pathlib import Path

from benchmarks.suite_order import file_order, longest_first_of, replay, times_per_test

TIMES = {"a.py": {"t1": 100.0}, "b.py": {"t1": 10.0}, "c.py": {"t1": 90.0}, "d.py": {f"t{i}": 30.0 for i in range(4)}}


def test_a_worker_with_under_three_tests_left_is_handed_the_next_file():
    # b to one worker, c to the other; each has one test left, so a goes to the first, d to the second
    assert replay(TIMES, ["b.py", "c.py", "a.py", "d.py"]) == [110.0, 210.0]
    # d's four tests keep the first worker from the next file until two of them ran: c goes to the second, b to it
    assert replay(TIMES, ["d.py", "a.py", "c.py", "b.py"]) == [130.0, 190.0]


def test_times_are_summed_per_test_and_files_named_as_conftest_names_them():
    log = (
        "12.50s call     tests/test_x.py::test_a\n"
        "1.00s setup    tests/test_x.py::test_a\n"
        "0.25s teardown tests/sub/test_y.py::test_b[moco]\n"
        "(3 durations < 0.005s hidden.  Use -vv to show these durations.)\n"
    )
    assert times_per_test(log) == {"test_x.py": {"test_a": 13.5}, "test_y.py": {"test_b[moco]": 0.25}}


def test_conftest_s_first_files_exist_and_come_first():
    first = longest_first_of((Path(__file__).parent / "conftest.py").read_text())
    assert len(first) >= 9 and all((Path(__file__).parent / name).is_file() for name in first)
    assert file_order(["test_b.py", first[1], "test_a.py", first[0]], first) == [
        first[0],
        first[1],
        "test_a.py",
        "test_b.py",
    ]
