"""Under CI=true a skipped test fails the run (tests/conftest.py), and the
compatibility corpus's tests are deselected, not skipped, when it is absent.
Checked on an inner pytest run (pytester, in this process)."""

from __future__ import annotations

import pytest

from tests import conftest

INNER_CONFTEST = """
from tests.conftest import pytest_collection_modifyitems, pytest_sessionfinish, compat
"""

TESTS = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("needs a unicorn")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_expected_failure():
    assert False

def test_reads_the_corpus(compat):
    assert compat.is_dir()
"""


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=TESTS)
    return pytester


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes"])
def test_ci_values(value: str) -> None:
    assert conftest.ci_strict({"CI": value})
    assert not conftest.ci_strict({"CI": "false"}) and not conftest.ci_strict({})


def test_a_skip_fails_the_run_under_ci(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                       tmp_path) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(conftest, "COMPAT", tmp_path / "absent")
    result = inner.runpytest_inprocess()
    result.assert_outcomes(passed=1, skipped=1, xfailed=1, deselected=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*skipped tests fail the run under CI=true*",
        "SKIPPED test_inner.py::test_skips: needs a unicorn",
    ])
    assert "test_expected_failure" not in result.stdout.str().split("CI=true")[-1]


def test_without_ci_a_skip_is_only_a_skip(inner: pytest.Pytester,
                                          monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(conftest, "COMPAT", tmp_path / "absent")
    result = inner.runpytest_inprocess()
    result.assert_outcomes(passed=1, skipped=1, xfailed=1, deselected=1)
    assert result.ret == pytest.ExitCode.OK
    assert "fail the run" not in result.stdout.str()


def test_the_corpus_tests_run_where_the_corpus_is(inner: pytest.Pytester,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path) -> None:
    monkeypatch.setenv("CI", "true")
    (tmp_path / "corpus").mkdir()
    monkeypatch.setattr(conftest, "COMPAT", tmp_path / "corpus")
    inner.makepyfile(test_inner=TESTS.replace('pytest.skip("needs a unicorn")', "pass"))
    result = inner.runpytest_inprocess()
    result.assert_outcomes(passed=3, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
