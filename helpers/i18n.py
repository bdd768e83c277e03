"""The Chinese edition: notebooks/zh/ is generated from notebooks/ and one translation file per notebook.

    python -m helpers.i18n            # write notebooks/zh/*.ipynb (fails, listing what is missing or stale)
    python -m helpers.i18n --check    # exit 1 if notebooks/zh/ is not what the sources give
    python -m helpers.i18n --todo 05_attention   # the cells of 05 still to translate, in the file's format

A translation file, notebooks/zh/translations/<notebook>.md, holds the markdown cells in order:

    <!-- cell 9b1e2c4a en 5d41402a -->
    ## 注意力 ...

`cell` is the English cell's id, `en` the first 8 hex digits of the sha-256 of its source when it was
translated: when the English cell changes, its translation is stale and generation stops until it is redone.
Code cells, outputs and metadata are copied as they are, so the zh notebook computes and prints exactly what
the English one does. Guides (glossary.md, teachers_guide.md) carry `<!-- en NNNNNNNN -->` on their first line.
"""
import argparse
import copy
import hashlib
import re
import sys
from collections import Counter
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
EN = ROOT / "notebooks"
ZH = EN / "zh"
TRANSLATIONS = ZH / "translations"
GUIDES = ("glossary.md", "teachers_guide.md")
MARK = re.compile(r"^<!-- cell (\S+) en ([0-9a-f]{8}) -->$", re.M)
GUIDE_MARK = re.compile(r"\A<!-- en ([0-9a-f]{8}) -->\n")
CJK = re.compile(r"[\u4e00-\u9fff]")
NBGRADER_MARKS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


class TranslationError(ValueError):
    pass


def digest(text):
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def notebooks(folder=EN):
    return sorted(Path(folder).glob("[0-9][0-9]*_*.ipynb"))


def translation_file(name, zh=ZH):
    """notebooks/zh/translations/<stem>.md for a notebook name (with or without .ipynb)."""
    return Path(zh) / "translations" / f"{Path(name).stem}.md"


def unmark_guide(text):
    """a zh guide without its first line (the hash of the English it translates): the text readers see."""
    return GUIDE_MARK.sub("", text, count=1)


def read_translations(path):
    """{cell id: (en digest, zh markdown)} from a translation file ({} when there is none)."""
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    marks = list(MARK.finditer(text))
    if text[:marks[0].start() if marks else len(text)].strip():
        raise TranslationError(f"{path}: text before the first `<!-- cell ID en HASH -->` line")
    out = {}
    for m, nxt in zip(marks, marks[1:] + [None]):
        if m[1] in out:
            raise TranslationError(f"{path}: cell {m[1]} is translated twice")
        out[m[1]] = (m[2], text[m.end() + 1:nxt.start() if nxt else len(text)].strip("\n"))
    return out


WIDE = "\u3000-\u303f\u4e00-\u9fff\uff00-\uffef"   # CJK characters and full-width punctuation


def relink(md):
    """relative links and images one folder deeper (the zh notebook sits in notebooks/zh/), and a line break
    between two Chinese characters removed (browsers would show it as a space; a translator may wrap lines)."""
    md = re.sub(f"([{WIDE}])\n(?=[{WIDE}])", r"\1", md)
    return re.sub(r'(\]\(|src=")\.\./', r"\1../../", md)


def _facts(md):
    """what a translation must keep: numbers, inline code, math, link targets, headings, html tags."""
    fenced = re.findall(r"^```.*?^```", md, re.S | re.M)
    indented = re.findall(r"^(?: {4}|\t).*$", md, re.M)
    code = re.findall(r"`(?:[^`\n]|\n(?!\n))+`", md)   # a code span may wrap, not cross a paragraph
    math = re.findall(r"\$\$.+?\$\$|\$[^$\n]+\$", md, re.S)
    rest = md
    for x in fenced + indented + code + math:
        rest = rest.replace(x, " ", 1)
    return {"numbers": Counter(re.findall(r"\d+(?:[.,]\d+)*", rest)),
            "code": Counter([x.strip() for x in indented] +
                            [re.sub(r"\s*\n\s*", " ", x) for x in fenced + code + math]),   # a wrap is a space
            "links": Counter(re.findall(r"\]\(([^)\s]+)", rest)),
            "headings": Counter(len(h) for h in re.findall(r"^(#+) ", rest, re.M)),
            "tags": Counter(re.findall(r"<(?!!--)[a-zA-Z/][^>]*>", rest))}


def fidelity(en, zh):
    """[problems] where the zh markdown drops or changes a number, code, math, link, heading or tag of `en`,
    or has no Chinese at all though the English is prose."""
    a, b = _facts(en), _facts(zh)
    out = []
    for k in a:
        if k == "numbers":   # a translation may add numbers (第 3 层) but must keep every one the English prints
            if missing := a[k] - b[k]:
                out.append(f"numbers {sorted(missing)} of the English are missing")
        elif a[k] != b[k]:
            out.append(f"{k} differ: English has {sorted((a[k] - b[k]).elements())} "
                       f"that the translation lacks, the translation {sorted((b[k] - a[k]).elements())}")
    for mark in NBGRADER_MARKS:   # nbgrader cuts a student version at these words, in markdown cells too
        if en.count(mark) != zh.count(mark):
            out.append(f"'{mark}' appears {zh.count(mark)} times, the English {en.count(mark)}: nbgrader's "
                       "ClearSolutions would cut the cell there")
    words = re.findall(r"[A-Za-z]{3,}", re.sub(r"`[^`]*`|\$[^$]*\$|\]\([^)]*\)|```.*?```", "", en, flags=re.S))
    if len(words) >= 4 and not CJK.search(zh):
        out.append("no Chinese in the translation")
    return out


def translate(en_nb, found):
    """the zh notebook, and [(cell id, problem)] for markdown cells without a current, faithful translation."""
    nb = copy.deepcopy(en_nb)
    problems = []
    for c in nb.cells:
        if c.cell_type != "markdown":
            continue
        tr = found.get(c.id)
        if tr is None:
            problems.append((c.id, "not translated"))
        elif tr[0] != digest(c.source):
            problems.append((c.id, f"stale: the English cell changed (was {tr[0]}, now {digest(c.source)})"))
        else:
            problems += [(c.id, p) for p in fidelity(c.source, tr[1])]
            c.source = relink(tr[1])
    return nb, problems


def generate(name, en=EN, zh=ZH):
    """(zh notebook as JSON text, problems) for notebook `name` (file name)."""
    en_nb = nbformat.read(Path(en) / name, as_version=4)
    found = read_translations(translation_file(name, zh))
    nb, problems = translate(en_nb, found)
    ids = {c.id for c in en_nb.cells}
    problems += [(i, "translation of a cell the English notebook no longer has") for i in found if i not in ids]
    return nbformat.writes(nb) + "\n", problems


def todo(name, en=EN, zh=ZH):
    """the cells of `name` still to translate, as a translation-file fragment holding the English text."""
    en_nb = nbformat.read(Path(en) / f"{Path(name).stem}.ipynb", as_version=4)
    found = read_translations(translation_file(name, zh))
    out = []
    for c in en_nb.cells:
        if c.cell_type == "markdown" and found.get(c.id, ("",))[0] != digest(c.source):
            out.append(f"<!-- cell {c.id} en {digest(c.source)} -->\n{c.source}\n")
    return "\n".join(out)


def guide_problem(name, en=EN, zh=ZH):
    """None when notebooks/zh/<name> is a translation of the current English guide, else what is wrong."""
    path = Path(zh) / name
    if not path.exists():
        return f"{path} is missing"
    m = GUIDE_MARK.match(path.read_text(encoding="utf-8"))
    now = digest((Path(en) / name).read_text(encoding="utf-8"))
    if not m:
        return f"{path}: first line must be `<!-- en {now} -->` (the English guide it translates)"
    if m[1] != now:
        return f"{path} is stale: notebooks/{name} changed since it was translated (was {m[1]}, now {now})"
    return None


def write_all(en=EN, zh=ZH, check=False, names=None):
    """generate every zh notebook (or those named); returns the list of problems (empty: all current).
    check=True writes nothing and also reports zh notebooks that differ from what the sources give."""
    problems = []
    for p in notebooks(en):
        if names and p.stem not in names:
            continue
        text, bad = generate(p.name, en, zh)
        problems += [f"{p.stem}: cell {i}: {why}" for i, why in bad]
        out = Path(zh) / p.name
        if bad:
            continue
        if check:
            if not out.exists() or out.read_text(encoding="utf-8") != text:
                problems.append(f"{out} is not what notebooks/{p.name} and its translation give: "
                                "run `python -m helpers.i18n`")
        else:
            out.write_text(text, encoding="utf-8")
    if names:
        return problems
    extra = {p.name for p in notebooks(zh)} - {p.name for p in notebooks(en)}
    problems += [f"{Path(zh) / n}: no English notebook of that name" for n in sorted(extra)]
    problems += [g for g in (guide_problem(n, en, zh) for n in GUIDES) if g]
    return problems


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m helpers.i18n", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", metavar="NOTEBOOK", help="only these notebooks (e.g. 05_attention)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if notebooks/zh is not current")
    ap.add_argument("--todo", metavar="NOTEBOOK", help="print the cells of NOTEBOOK still to translate")
    a = ap.parse_args(argv)
    if a.todo:
        print(todo(a.todo), end="")
        return 0
    if bad := [n for n in a.names if not (EN / f"{n}.ipynb").exists()]:
        ap.error(f"no notebook {', '.join(bad)} in notebooks/ (give names like 05_attention)")
    problems = write_all(check=a.check, names=a.names)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s): translate the cells listed (`python -m helpers.i18n --todo NAME` "
              f"prints them) in {TRANSLATIONS.relative_to(ROOT)}/, then run `python -m helpers.i18n`",
              file=sys.stderr)
        return 1
    if not a.check:
        print(f"wrote {len(a.names) or len(notebooks(EN))} notebook(s) into {ZH.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
