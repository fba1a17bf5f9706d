"""Under CI=true a skipped test fails, unless it skipped for want of a GPU.

A skip usually means a tool or package is missing. Locally that is a fair reason to skip; in CI
it means an install step is missing, and a quietly skipped test would hide it. The only
exception is the CUDA tests on a machine without a GPU: CI machines have none.
"""

from __future__ import annotations

import os
import re

import pytest

# The reasons the GPU tests give (tests/test_ops_cuda.py and friends: "needs a CUDA GPU: ...").
NO_GPU = re.compile(r"needs a CUDA GPU|no CUDA device|no GPU", re.IGNORECASE)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2])
    return str(longrepr)


def forbidden(report) -> bool:
    """A skip CI must not accept: a real skip (not an expected failure) for any reason but no GPU."""
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return False
    return not NO_GPU.search(skip_reason(report))


def fail_instead(report) -> None:
    reason = skip_reason(report)
    report.outcome = "failed"
    report.longrepr = (f"skipped in CI ({reason}). With CI=true a skip fails unless it is for a missing GPU: "
                       "install what the test needs in .ci/run.")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if forbidden(report):
        fail_instead(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if forbidden(report):  # a whole module skipped, e.g. by pytest.importorskip at import
        fail_instead(report)
