"""Suite-wide rules for tests that need the real data in ../shared/data.

A test marked `data` is skipped, with the reason shown, when ../shared/data is absent. When
it is present, such a test must not skip: the session fails and names it, so a broken path
or a renamed file cannot hide behind a skip (CI runs beside ../shared).
"""

from __future__ import annotations

import pytest

from paths import DATA

_skipped_data_tests: list[str] = []


def pytest_collection_modifyitems(config, items):
    if DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"needs the shared data, and {DATA} is absent")
    for item in items:
        if "data" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logreport(report):
    if report.skipped and DATA.is_dir() and "data" in report.keywords:
        _skipped_data_tests.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _skipped_data_tests and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _skipped_data_tests:
        terminalreporter.section("data tests skipped although ../shared/data is present", sep="!")
        for nodeid in _skipped_data_tests:
            terminalreporter.write_line(f"  {nodeid}")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, which never waits on a busy second core
    (a module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
