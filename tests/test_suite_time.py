"""benchmarks/suite_time.py reads each suite's result from pytest's last line, whatever else the log holds; its
worker plugin puts each pytest-xdist worker in a cgroup of its own."""

import os

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


def test_the_worker_plugin_puts_each_worker_in_a_cgroup_of_its_own_with_its_quota(tmp_path, monkeypatch):
    from benchmarks.suite_time import CGROUPS, WORKER_PLUGIN

    for controller in ("cpu", "cpuacct"):
        (tmp_path / controller / "suite").mkdir(parents=True)
    plugin: dict = {}
    exec(WORKER_PLUGIN.replace(str(CGROUPS), str(tmp_path)), plugin)  # the same file, its cgroups under tmp_path
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    plugin["pytest_configure"](None)  # not a worker (the controller, or -n 0): stays where it is
    assert not (tmp_path / "cpu" / "suite" / "gw0").exists()
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    monkeypatch.setenv("SSLFLOW_SUITE_CGROUP", "suite")
    monkeypatch.setenv("SSLFLOW_WORKER_CPUS", "0.5")
    plugin["pytest_configure"](None)
    worker = tmp_path / "cpu" / "suite" / "gw0"
    assert (worker / "cpu.cfs_quota_us").read_text() == "50000" and (
        worker / "cpu.cfs_period_us"
    ).read_text() == "100000"
    for controller in ("cpu", "cpuacct"):
        assert (tmp_path / controller / "suite" / "gw0" / "cgroup.procs").read_text() == str(os.getpid())


def test_a_suite_alone_has_no_cpu_limit_and_no_ratio(tmp_path, monkeypatch):
    import benchmarks.suite_time as suite_time

    for controller in ("cpu", "cpuacct"):
        (tmp_path / controller).mkdir()
    monkeypatch.setattr(suite_time, "CGROUPS", tmp_path)
    assert (suite_time._cgroup("alone", None)["cpu"] / "cpu.cfs_quota_us").read_text() == "-1"
    assert (suite_time._cgroup("half", 0.5)["cpu"] / "cpu.cfs_quota_us").read_text() == "50000"
    run = {"make_test_wall_seconds": 1200.0, "cpu_seconds": 2000.0}
    assert suite_time._this_over_base({"this": run}) is None
    base = {"make_test_wall_seconds": 1500.0, "cpu_seconds": 2000.0}
    assert suite_time._this_over_base({"this": run, "base": base}) == {
        "make_test_wall_seconds": 0.8,
        "cpu_seconds": 1.0,
    }


def test_the_suite_timed_is_this_checkout_unless_another_is_named(tmp_path):
    from benchmarks.suite_time import PROJECT_ROOT, _checkouts

    assert _checkouts(None, None) == {"this": PROJECT_ROOT}
    assert _checkouts(tmp_path / "old", None) == {"this": tmp_path / "old"}
    assert _checkouts(None, tmp_path / "base") == {"this": PROJECT_ROOT, "base": tmp_path / "base"}
