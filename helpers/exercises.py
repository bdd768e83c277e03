"""Graded exercises in nbgrader's format: student versions, and a check that every graded test can fail.

    python -m helpers.exercises release student/      # student copies of notebooks/*.ipynb, solutions cleared

A solution cell has nbgrader metadata {"solution": true} and its answer between `### BEGIN SOLUTION` and
`### END SOLUTION`; a graded test cell has {"grade": true, "points": N, "locked": true}. The notebooks in
notebooks/ keep their solutions (nbval runs them, so every graded test passes there); nbgrader's own
ClearSolutions and ClearOutput preprocessors make the student version, exactly what
`nbgrader generate_assignment` does to these cells.
"""
import argparse
import copy
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def meta(cell):
    return cell.get("metadata", {}).get("nbgrader", {})


def is_solution(cell):
    return bool(meta(cell).get("solution"))


def is_graded(cell):
    return bool(meta(cell).get("grade")) and not is_solution(cell)


def exercise_notebooks(folder=NOTEBOOKS):
    """notebooks that hold at least one graded cell, in reading order."""
    return [p for p in sorted(Path(folder).glob("[0-9][0-9]*.ipynb"))
            if any(is_graded(c) for c in nbformat.read(p, as_version=4).cells)]


def student_version(nb):
    """a copy with every solution region replaced by nbgrader's stub and every output cleared."""
    from nbgrader.preprocessors import ClearOutput, ClearSolutions
    nb = copy.deepcopy(nb)
    resources = {"language": "python"}
    nb, resources = ClearSolutions().preprocess(nb, resources)
    nb, resources = ClearOutput().preprocess(nb, resources)
    return nb


def release(out_dir, folder=NOTEBOOKS):
    """write the student version of every exercise notebook into out_dir; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for p in exercise_notebooks(folder):
        nbformat.write(student_version(nbformat.read(p, as_version=4)), out / p.name)
        written.append(out / p.name)
    return written


def points(nb):
    return sum(meta(c).get("points", 0) for c in nb.cells if is_graded(c))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("release", help="write student versions (solutions cleared) into a folder")
    r.add_argument("out", help="output folder, e.g. student/")
    sub.add_parser("list", help="list the exercise notebooks and their points")
    a = p.parse_args()
    if a.cmd == "release":
        for path in release(a.out):
            print(path)
    else:
        for path in exercise_notebooks():
            nb = nbformat.read(path, as_version=4)
            n = sum(is_graded(c) for c in nb.cells)
            print(f"{path.name}: {n} graded tests, {points(nb)} points")


if __name__ == "__main__":
    main()
