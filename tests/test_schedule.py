"""The loadfile order of tests/support/schedule.py: costly files first, split files in stable parts."""

from __future__ import annotations

from pathlib import Path

from tests.support.schedule import COSTS, DEFAULT_PER_TEST, SPLIT, by_cost, cost, costs_from_junit, scope_of

ROOT = Path(__file__).resolve().parent.parent


def test_every_named_file_exists() -> None:
    """A renamed or removed file must leave the tables (a stale name would weigh nothing)."""
    assert [p for p in [*COSTS, *SPLIT] if not (ROOT / p).is_file()] == []


def test_split_files_have_parts_and_others_are_whole() -> None:
    ids = [f"tests/test_fault_matrix.py::test_fault[case-{i}]" for i in range(60)]
    parts = {scope_of(i) for i in ids}
    assert parts == {f"tests/test_fault_matrix.py@{n}" for n in range(SPLIT["tests/test_fault_matrix.py"])}
    assert [scope_of(i) for i in ids] == [scope_of(i) for i in ids]  # stable: a hash, not an order
    assert scope_of("tests/test_rules.py::test_promtool_unit_tests") == "tests/test_rules.py"
    assert scope_of("tests/interop/test_opensmtpd.py::test_x[a::b]") == "tests/interop/test_opensmtpd.py"


def test_most_expensive_first_unknown_files_by_test_count() -> None:
    queue = {
        "tests/test_new_unit.py": dict.fromkeys(("a", "b"), False),
        "tests/test_rules.py": dict.fromkeys(("a",), False),
        "tests/test_new_many.py": dict.fromkeys(map(str, range(200)), False),
        "tests/test_fault_matrix.py@1": dict.fromkeys(("a",), False),
    }
    assert cost("tests/test_new_many.py", 200) == 200 * DEFAULT_PER_TEST
    assert cost("tests/test_fault_matrix.py@1", 1) == COSTS["tests/test_fault_matrix.py"] / 3
    assert list(by_cost(queue)) == [
        "tests/test_rules.py",
        "tests/test_fault_matrix.py@1",
        "tests/test_new_many.py",
        "tests/test_new_unit.py",
    ]


def test_costs_from_a_junit_report(tmp_path: Path) -> None:
    xml = tmp_path / "run.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_rules" name="a" time="2.5"/>'
        '<testcase classname="tests.test_rules" name="b" time="1.0"/>'
        '<testcase classname="tests.interop.test_opensmtpd" name="c" time="4"/>'
        '<testcase classname="tests.test_release.Inner" name="d" time="0.5"/>'
        "</testsuite></testsuites>"
    )
    assert costs_from_junit(xml, ROOT) == {
        "tests/interop/test_opensmtpd.py": 4.0,
        "tests/test_rules.py": 3.5,
        "tests/test_release.py": 0.5,
    }
