"""The Chinese edition (helpers.i18n): notebooks/zh/ is what the English notebooks and their translations give.

The drift test fails when an English notebook changed and its zh version was not regenerated, when a markdown cell
has no current translation, or when a translation drops a number, code, math, link or heading of the English.
"""
import shutil
from pathlib import Path

import nbformat
import pytest

from helpers import exercises, i18n

ROOT = Path(__file__).resolve().parent.parent
EN, ZH = ROOT / "notebooks", ROOT / "notebooks" / "zh"


def test_zh_edition_is_current():
    problems = i18n.write_all(check=True)
    assert not problems, "\n".join(problems[:30])


@pytest.mark.parametrize("path", i18n.notebooks(EN), ids=[p.stem for p in i18n.notebooks(EN)])
def test_zh_notebook_has_the_same_code_and_outputs(path):
    en, zh = nbformat.read(path, as_version=4), nbformat.read(ZH / path.name, as_version=4)
    assert [c.id for c in zh.cells] == [c.id for c in en.cells]
    assert zh.metadata == en.metadata
    for a, b in zip(en.cells, zh.cells):
        assert a.cell_type == b.cell_type and a.metadata == b.metadata, a.id
        if a.cell_type == "code":
            assert (a.source, a.get("outputs"), a.get("execution_count")) == \
                   (b.source, b.get("outputs"), b.get("execution_count")), a.id
        elif a.cell_type == "markdown" and len(a.source.split()) > 3:
            assert a.source != b.source and i18n.CJK.search(b.source), f"{path.stem} cell {a.id} is not translated"


def test_zh_exercises_release_like_the_english():
    en, zh = exercises.exercise_notebooks(EN), exercises.exercise_notebooks(ZH)
    assert [p.name for p in zh] == [p.name for p in en] and len(en) >= 10
    for p in zh:
        a = exercises.student_version(nbformat.read(EN / p.name, as_version=4))
        b = exercises.student_version(nbformat.read(p, as_version=4))
        graded = [c.source for c in a.cells if exercises.is_graded(c)]
        assert graded and graded == [c.source for c in b.cells if exercises.is_graded(c)], p.name
        assert [c.source for c in a.cells if c.cell_type == "code"] == \
               [c.source for c in b.cells if c.cell_type == "code"], p.name


# ---------------------------------------------------------------- the mechanism, on a small copy

@pytest.fixture
def tiny(tmp_path):
    """notebooks/ with one notebook of two markdown cells and one code cell, fully translated."""
    en, zh = tmp_path / "notebooks", tmp_path / "notebooks" / "zh"
    (zh / "translations").mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 01 · Tokens\n\nThe vocabulary has 128,256 ids; see `encode` and "
                                              "![a figure](../assets/x.png)."),
                nbformat.v4.new_code_cell("print(1 + 1)"),
                nbformat.v4.new_markdown_cell("Layer 3 attends to $q \\cdot k$ of [notebook 05](05_attention.ipynb).")]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="2\n")]
    nbformat.write(nb, en / "01_tokens.ipynb")
    a, c = nb.cells[0], nb.cells[2]
    (zh / "translations" / "01_tokens.md").write_text(
        f"<!-- cell {a.id} en {i18n.digest(a.source)} -->\n# 01 · 词元 (token)\n\n词表共有 128,256 个 id；"
        "参见 `encode` 和 ![一张图](../assets/x.png)。\n\n"
        f"<!-- cell {c.id} en {i18n.digest(c.source)} -->\n第 3 层关注 [笔记本 05](05_attention.ipynb) 的 "
        "$q \\cdot k$。\n", encoding="utf-8")
    for g in i18n.GUIDES:
        (en / g).write_text(f"# {g}\n")
        (zh / g).write_text(f"<!-- en {i18n.digest(f'# {g}' + chr(10))} -->\n# 中文 {g}\n", encoding="utf-8")
    return en, zh


def test_generate_writes_translated_markdown_and_keeps_code(tiny):
    en, zh = tiny
    assert i18n.write_all(en, zh) == []
    out = nbformat.read(zh / "01_tokens.ipynb", as_version=4)
    assert out.cells[0].source.startswith("# 01 · 词元") and "](../../assets/x.png)" in out.cells[0].source
    assert "](05_attention.ipynb)" in out.cells[2].source                  # a sibling: the zh notebook
    assert out.cells[1] == nbformat.read(en / "01_tokens.ipynb", as_version=4).cells[1]
    assert i18n.write_all(en, zh, check=True) == []
    # a translator's line wrap inside Chinese would show as a space: gone; list items and tables keep theirs
    assert i18n.relink("第一行，\n接着写。\n\n- 一项\n- 二项\n| 表 |") == "第一行，接着写。\n\n- 一项\n- 二项\n| 表 |"


def test_a_changed_english_cell_makes_its_translation_stale(tiny):
    en, zh = tiny
    i18n.write_all(en, zh)
    nb = nbformat.read(en / "01_tokens.ipynb", as_version=4)
    nb.cells[2].source = nb.cells[2].source.replace("Layer 3", "Layer 4")
    nbformat.write(nb, en / "01_tokens.ipynb")
    problems = i18n.write_all(en, zh, check=True)
    assert len(problems) == 1 and f"cell {nb.cells[2].id}: stale" in problems[0]
    marker = f"<!-- cell {nb.cells[2].id} en {i18n.digest(nb.cells[2].source)} -->"
    assert marker + "\nLayer 4" in i18n.todo("01_tokens", en, zh)


def test_changed_code_is_drift_until_regenerated(tiny):
    en, zh = tiny
    i18n.write_all(en, zh)
    nb = nbformat.read(en / "01_tokens.ipynb", as_version=4)
    nb.cells[1].source = "print(2 + 2)"
    nbformat.write(nb, en / "01_tokens.ipynb")
    assert "is not what notebooks/01_tokens.ipynb" in " ".join(i18n.write_all(en, zh, check=True))
    assert i18n.write_all(en, zh) == [] and i18n.write_all(en, zh, check=True) == []


def test_missing_and_orphan_translations_are_named(tiny):
    en, zh = tiny
    nb = nbformat.read(en / "01_tokens.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("A new paragraph about heads."))
    del nb.cells[2]
    nbformat.write(nb, en / "01_tokens.ipynb")
    problems = " | ".join(i18n.write_all(en, zh))
    assert f"cell {nb.cells[-1].id}: not translated" in problems
    assert "no longer has" in problems


@pytest.mark.parametrize("change, why", [
    (("128,256", "128256"), "numbers ['128,256']"),          # a printed number must survive translation
    (("`encode`", "`编码`"), "code differ"),                   # code is one source
    (("../assets/x.png", "x.png"), "links differ"),
    (("# 01 · 词元 (token)", "01 · 词元"), "headings differ"),
    (("第 3 层关注", "第三层关注"), "numbers ['3']"),
    (("第 3 层关注", "BEGIN SOLUTION 第 3 层关注"), "'BEGIN SOLUTION' appears 1 times"),   # nbgrader would cut here
])
def test_an_unfaithful_translation_is_refused(tiny, change, why):
    en, zh = tiny
    f = zh / "translations" / "01_tokens.md"
    f.write_text(f.read_text(encoding="utf-8").replace(*change), encoding="utf-8")
    problems = i18n.write_all(en, zh)
    assert len(problems) == 1 and why in problems[0], problems
    assert not (zh / "01_tokens.ipynb").exists()                           # nothing half-translated is written


def test_a_translation_without_chinese_is_refused():
    assert i18n.fidelity("Layer 3 attends to the previous token.", "Layer 3 attends to the previous token.") == \
        ["no Chinese in the translation"]


def test_a_stale_guide_is_named(tiny):
    en, zh = tiny
    (en / "glossary.md").write_text("# glossary\n\nnew entry\n")
    assert any("glossary.md is stale" in p for p in i18n.write_all(en, zh, check=True))
    (zh / "teachers_guide.md").write_text("# 教师指南\n", encoding="utf-8")
    assert any("first line must be" in p for p in i18n.write_all(en, zh, check=True))


def test_bad_translation_file_is_one_clear_error(tiny):
    en, zh = tiny
    f = zh / "translations" / "01_tokens.md"
    f.write_text("stray text\n" + f.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(i18n.TranslationError, match="01_tokens.md: text before the first"):
        i18n.write_all(en, zh)
    shutil.rmtree(zh / "translations")
    assert "not translated" in i18n.write_all(en, zh)[0]
