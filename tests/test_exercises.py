"""The graded exercises: well-formed nbgrader cells, and with the solutions cleared every graded test fails
while the rest of the student notebook still runs. (With the solutions, nbval runs every graded test.)"""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers.exercises import exercise_notebooks, is_graded, is_solution, meta, student_version

CORE = [f"{i:02d}" for i in range(9)]   # 00-08 must each end with exercises
EXERCISES = exercise_notebooks()


def test_every_core_notebook_has_three_graded_exercises():
    have = {p.name[:2]: p for p in EXERCISES}
    missing = [n for n in CORE if n not in have]
    assert not missing, f"no graded exercises in notebooks {missing}"
    for p in have.values():
        graded = [c for c in nbformat.read(p, as_version=4).cells if is_graded(c)]
        assert len(graded) >= 3, p.name


@pytest.mark.parametrize("path", EXERCISES, ids=[p.stem for p in EXERCISES])
def test_cells_are_well_formed(path):
    nb = nbformat.read(path, as_version=4)
    ids = [meta(c)["grade_id"] for c in nb.cells if meta(c)]
    assert len(ids) == len(set(ids)), "grade_id must be unique within a notebook"
    for c in nb.cells:
        m = meta(c)
        if is_solution(c):
            assert "### BEGIN SOLUTION" in c.source and "### END SOLUTION" in c.source, m["grade_id"]
            assert c.cell_type == "markdown" or not m.get("grade"), "code solutions are graded by test cells"
        if is_graded(c):
            assert c.cell_type == "code" and m.get("points", 0) > 0 and m.get("locked"), m["grade_id"]
            assert "BEGIN SOLUTION" not in c.source, m["grade_id"]


def _run_student(path):
    nb = student_version(nbformat.read(path, as_version=4))
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(Path(path).parent)}}).execute()
    return nb


def _errors(cell):
    return [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]


@pytest.mark.parametrize("path", EXERCISES, ids=[p.stem for p in EXERCISES])
def test_student_version_runs_and_every_graded_test_fails(path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = _run_student(path)
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        if is_graded(c):
            assert _errors(c), f"{meta(c)['grade_id']} passes without a solution: the test cannot fail"
        elif is_solution(c):
            assert any(e.get("ename") == "NotImplementedError" for e in _errors(c)), meta(c)["grade_id"]
        else:
            assert not _errors(c), f"a teaching cell fails in the student version:\n{c.source[:300]}"


def test_release_writes_student_copies(tmp_path):
    from helpers.exercises import release
    written = release(tmp_path)
    assert [p.name for p in written] == [p.name for p in EXERCISES]
    for p in written:
        text = p.read_text()
        assert "### BEGIN SOLUTION" not in text and "raise NotImplementedError()" in text
        assert not any(c.get("outputs") for c in nbformat.read(p, as_version=4).cells)
