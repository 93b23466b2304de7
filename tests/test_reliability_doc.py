"""The reliability table plugin (tests/reliability_doc.py) on a throw-away test file."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_the_table_comes_from_the_run(pytester: pytest.Pytester) -> None:
    pytester.syspathinsert(HERE)
    pytester.makeconftest('pytest_plugins = ["reliability_doc"]')
    pytester.makepyfile(test_cases='''
        import pytest

        @pytest.mark.reliability("fault", case="pipe | cut", expected="goes on")
        def test_fault(observe, tmp_path):
            observe(f"wrote {tmp_path}/crops.jsonl")
            observe("0 lost")

        @pytest.mark.reliability("bad input", case="junk", expected="clear error")
        def test_bad(observe):
            observe("saw a traceback")
            assert False, "no clear error"

        def test_unmarked():
            pass
    ''')
    result = pytester.runpytest("--reliability-doc", "doc.md", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    doc = (pytester.path / "doc.md").read_text()
    assert "**1 of 2 passed**" in doc and "## Faults (1)" in doc and "## Bad inputs (1)" in doc
    assert "| 1 | pipe \\| cut | goes on | wrote $TMP/crops.jsonl; 0 lost | passed |" in doc
    assert "| 1 | junk | clear error | saw a traceback | failed: AssertionError: no clear error" in doc
    assert "test_unmarked" not in doc


def test_no_page_without_the_option_and_observe_needs_the_marker(pytester: pytest.Pytester) -> None:
    pytester.syspathinsert(HERE)
    pytester.makeconftest('pytest_plugins = ["reliability_doc"]')
    pytester.makepyfile(test_cases='''
        def test_observe_alone(observe):
            pass
    ''')
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    assert "needs @pytest.mark.reliability" in result.stdout.str()
    assert not list(pytester.path.glob("*.md"))


def test_a_table_that_cannot_be_written_fails_the_run_in_one_line(pytester: pytest.Pytester) -> None:
    pytester.syspathinsert(HERE)
    pytester.makeconftest('pytest_plugins = ["reliability_doc"]')
    pytester.makepyfile(test_cases='''
        import pytest

        @pytest.mark.reliability("fault", case="c", expected="e")
        def test_fault(observe):
            observe("ok")
    ''')
    (pytester.path / "not_a_folder").write_text("a file where the table's folder should be")
    result = pytester.runpytest("--reliability-doc", "not_a_folder/doc.md", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "reliability table not written to not_a_folder/doc.md" in result.stderr.str()
    assert "Traceback" not in result.stderr.str()
