"""Build the static course site: stage the notebooks (stored outputs, never executed) and guides with a generated
index and explorer page, export the explorer's attention data, run Sphinx + MyST-NB (conf.py here).

Staging rewrites only copies under _build/: the README's notebook table becomes the index (reading order),
the notebook 11 widget output becomes the kernel-free explorer (also shown after 10's first attention map), other
widget outputs (progress bars) are dropped. The Chinese edition (notebooks/zh, helpers.i18n) is built the same
way into zh/, with Sphinx's zh_CN interface, and every page links to its counterpart in the other language.
"""
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from helpers import i18n
from helpers.site import conf
from helpers.viz import explorer_data

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NOTEBOOKS = ROOT / "notebooks"
ZH = i18n.ZH
GUIDES = ("teachers_guide.md", "glossary.md")
WIDGET = "application/vnd.jupyter.widget-view+json"
EXPLORER_DIV = '<div class="llama3-explorer" data-llama3-explorer></div>'
DATA = "_static/explorer/attention.json"   # where explorer.js looks (relative to itself: explorer/attention.json)
LAB = "http://localhost:8888/lab/tree/notebooks/{name}.ipynb"
COLAB = "https://colab.research.google.com/github/{repo}/blob/main/notebooks/{name}.ipynb"
ROW = re.compile(r"^\| *(\w+) *\| *`(\w+)` *\|(.*)$")


def reading_order(readme=ROOT / "README.md"):
    """[(number, notebook name, rest of the table row)] from the README's notebook table, in its order."""
    rows = [ROW.match(line) for line in readme.read_text().splitlines()]
    rows = [(m[1], m[2], m[3]) for m in rows if m and (NOTEBOOKS / f"{m[2]}.ipynb").exists()]
    if not rows:
        raise ValueError(f"no notebook table found in {readme}: expected rows like | 00 | `00_checkpoint` | ... |")
    return rows


def title(nb_path):
    """the first heading of a notebook's first markdown cell."""
    cells = json.loads(Path(nb_path).read_text(encoding="utf-8"))["cells"]
    md = next(("".join(c["source"]) for c in cells if c["cell_type"] == "markdown"), "")
    return next((line.lstrip("#").strip() for line in md.splitlines() if line.startswith("# ")), Path(nb_path).stem)


def index_md(rows, lang="en"):
    names = [r[1] for r in rows]
    others = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb") if p.stem not in names)  # not in the table yet
    toc = names + others + ["explorer", *[Path(g).stem for g in GUIDES]]
    if lang == "zh":
        table = [f"| {num} | [{title(ZH / f'{name}.ipynb')}]({name}.ipynb) |" for num, name, _ in rows]
        return "\n".join([
            "# llama3-by-hand 中文版", "",
            "在检查点的原始权重上亲手算出 Llama 3 前向传播的每一步：分词器、嵌入、均方根归一化 (RMSNorm)、",
            "带旋转位置编码 (RoPE) 的注意力、SwiGLU、logits，以及带 KV 缓存的生成。下面每一页都是一个笔记本",
            "最后一次运行时的样子（保存的输出）；下载后即可运行，或在 JupyterLab 中打开。",
            "代码与输出和英文版完全相同，只有说明文字是中文。", "",
            "- [注意力浏览器](explorer.md)：默认模型每一层、每一个注意力头，直接在浏览器里看。",
            "- [教师指南](teachers_guide.md) 与 [术语表](glossary.md)。", "",
            "## 阅读顺序", "", "| # | 笔记本 |", "|---|---|", *table,
            *([""] + [f"- [{title(ZH / f'{n}.ipynb')}]({n}.ipynb)" for n in others] if others else []), "",
            "```{toctree}", ":hidden:", ":maxdepth: 1", "", *toc, "```", ""])
    table = [f"| {num} | [{name}]({name}.ipynb) |{rest}" for num, name, rest in rows]
    return "\n".join([
        "# llama3-by-hand", "",
        "Compute every step of Llama 3's forward pass yourself, on the raw weights of a checkpoint: tokenizer,",
        "embeddings, RMSNorm, attention with RoPE, SwiGLU, logits, generation with a KV cache. Each page below is",
        "a notebook as it was last run (its stored outputs); download one to run it, or open it in JupyterLab.", "",
        "- [The attention explorer](explorer.md): every layer and head of the default model, in the browser.",
        "- [Teacher's guide](teachers_guide.md) and [glossary](glossary.md).", "",
        "## Reading order", "",
        "| # | notebook | what you compute | checked against |", "|---|---|---|---|", *table,
        *([""] + [f"- [{n}]({n}.ipynb)" for n in others] if others else []), "",
        "```{toctree}", ":hidden:", ":maxdepth: 1", "", *toc, "```", ""])


def explorer_md(lang="en"):
    if lang == "zh":
        return "\n".join([
            "# 注意力浏览器", "",
            "模型每一层、每一个注意力头在几个保存好的提示词上的注意力，在构建本站时记录（与笔记本",
            "[11](11_explorer.ipynb) 相同的前向传播，概率保留 3 位小数）。选择提示词、层、头和视图；",
            "把鼠标停在某一格上可看到它的查询/键词元对和数值。*probabilities*：分数经 softmax 后的概率，",
            "每个查询一行；*scores*：因果掩码允许的每一对的 `q·k/√head_dim`；*head types*：模型所有的头，",
            "按注意力流向命名（`bos`、`prev`、`self`、`spread`、`mixed`：见笔记本 [10](10_see_inside.ipynb)），",
            "点击某个头即可打开它。浏览器的控件标签为英文。", "",
            "```{raw} html", EXPLORER_DIV, "```", ""])
    return "\n".join([
        "# Attention explorer", "",
        "Attention of every layer and head of the model for a few stored prompts, recorded when this site was",
        "built (the same forward pass as notebook [11](11_explorer.ipynb), probabilities rounded to 3 digits).",
        "Pick a prompt, layer, head and view; hover a cell for its query/key pair and value. *probabilities*:",
        "softmax of the scores, one row per query; *scores*: `q·k/√head_dim` of the pairs the causal mask lets",
        "through; *head types*: every head of the model at once, named by where its attention goes",
        "(`bos`, `prev`, `self`, `spread`, `mixed`: notebook [10](10_see_inside.ipynb)); click a head to open it.", "",
        "```{raw} html", EXPLORER_DIV, "```", ""])


SITE_EXPLORER_NOTE = {
    "en": ["**In your browser:** the same maps for every layer and head and a few prompts, recorded when this ",
           "site was built ([the explorer](explorer.md)):\n\n"],
    "zh": ["**在浏览器中：**每一层、每一个头在几个提示词上的同类注意力图，在构建本站时记录",
           "（[注意力浏览器](explorer.md)）：\n\n"]}


def stage_notebook(src, dst, lang="en"):
    """Copy a notebook, swapping widget outputs (no kernel here) for the explorer or nothing."""
    nb = json.loads(src.read_text())
    nb["metadata"].pop("widgets", None)
    for c in nb["cells"]:
        outs = []
        for o in c.get("outputs", []):
            data = o.get("data", {})
            if WIDGET not in data:
                outs.append(o)
            elif "".join(data.get("text/plain", "")).startswith("VBox"):   # 11's explorer widget
                outs.append({"output_type": "display_data", "metadata": {},
                             "data": {"text/html": EXPLORER_DIV, "text/plain": "(the explorer)"}})
        if "outputs" in c:
            c["outputs"] = outs
    if src.stem == "10_see_inside":   # after its first single-head map: every head, without a kernel
        at = next((i for i, c in enumerate(nb["cells"]) if "plot_attention(" in "".join(c["source"])), None)
        if at is not None:
            nb["cells"].insert(at + 1, {"cell_type": "markdown", "id": "site-explorer", "metadata": {},
                                        "source": [*SITE_EXPLORER_NOTE[lang], EXPLORER_DIV, "\n"]})
    dst.write_text(json.dumps(nb))


def stage(src_dir, readme=ROOT / "README.md", lang="en"):
    """Write the Sphinx source tree of one language into src_dir (emptied first)."""
    folder = ZH if lang == "zh" else NOTEBOOKS
    shutil.rmtree(src_dir, ignore_errors=True)
    src_dir.mkdir(parents=True)
    for nb in sorted(NOTEBOOKS.glob("*.ipynb")):
        if not (folder / nb.name).exists():
            raise FileNotFoundError(f"{folder / nb.name} is missing: run `python -m helpers.i18n`")
        stage_notebook(folder / nb.name, src_dir / nb.name, lang)
    for g in GUIDES:   # the zh guides start with the hash of the English one they translate: not for readers
        (src_dir / g).write_text(i18n.unmark_guide((folder / g).read_text()))
    (src_dir / "index.md").write_text(index_md(reading_order(readme), lang))
    (src_dir / "explorer.md").write_text(explorer_md(lang))


LINKS = {"en": ("download the notebook", "open in JupyterLab", "(a local <code>jupyter lab</code> started in the "
                "repo root)", "open in Colab", "(upload the downloaded notebook there)", "中文", "zh/{page}.html"),
         "zh": ("下载笔记本", "在 JupyterLab 中打开", "（在仓库根目录启动的本地 <code>jupyter lab</code>）",
                "在 Colab 中打开", "（把下载的笔记本上传到那里）", "English", "../{page}.html")}


def launch_links(app, pagename, templatename, context, doctree):
    """"download / open in JupyterLab / open in Colab" on every notebook page, and on every page a link to the
    same page in the other language (template: templates/page.html)."""
    lang = "zh" if app.config.language.startswith("zh") else "en"
    words = LINKS[lang]
    src = Path(app.srcdir)
    has_source = (src / f"{pagename}.ipynb").exists() or (src / f"{pagename}.md").exists()
    context["other_lang"] = {"text": words[5], "href": words[6].format(page=pagename),
                             "lang": "en" if lang == "zh" else "zh-CN"} if has_source else None
    if not (src / f"{pagename}.ipynb").exists():
        context["launch"] = None
        return
    repo = os.environ.get("LLAMA3_SITE_GITHUB", "").strip("/")   # owner/name on GitHub, for Colab's link
    name = f"zh/{pagename}" if lang == "zh" else pagename
    context["launch"] = {"ipynb": f"notebooks/{pagename}.ipynb", "lab": LAB.format(name=name),
                         "colab": COLAB.format(repo=repo, name=name) if repo else
                         "https://colab.research.google.com/", "github": repo, "words": words}


def build(out=ROOT / "_build" / "site", work=ROOT / "_build" / "site-src", quiet=True, models=None):
    """Stage, run Sphinx, export the explorer data of `models` (default: all of explorer_data.MODELS that load);
    returns (out, seconds). Raises on Sphinx errors."""
    from sphinx.application import Sphinx   # here: importing helpers.site stays cheap
    t0 = time.perf_counter()
    out, work = Path(out), Path(work)
    shutil.rmtree(out, ignore_errors=True)
    # myst-nb writes jupyter_execute/ beside the output folder: build zh outside `out`, then move it in
    shutil.rmtree(work / "html-zh", ignore_errors=True)
    for lang, dst, folder in (("en", out, NOTEBOOKS), ("zh", work / "html-zh" / "zh", ZH)):
        stage(work / f"src-{lang}", lang=lang)
        app = Sphinx(str(work / f"src-{lang}"), str(HERE), str(dst), str(work / f"doctrees-{lang}"), "html",
                     status=None if quiet else sys.stdout, warning=sys.stderr, freshenv=True,
                     confoverrides={"language": "zh_CN" if lang == "zh" else "en",
                                    "html_js_files": conf.html_js_files + (["zh-search.js"] if lang == "zh" else [])})
        app.connect("html-page-context", launch_links)
        app.build()
        if app.statuscode:
            raise RuntimeError(f"sphinx failed on the {lang} pages (status {app.statuscode}); "
                               "run `python -m helpers.site -v` to see why")
        (dst / "notebooks").mkdir(exist_ok=True)
        for nb in folder.glob("*.ipynb"):                 # the originals, for "download the notebook"
            shutil.copy(nb, dst / "notebooks" / nb.name)
    shutil.move(work / "html-zh" / "zh", out / "zh")
    explorer_data.write(out / DATA, models=models)
    (out / "zh" / DATA).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / DATA, out / "zh" / DATA)            # explorer.js reads the data beside itself
    (out / ".nojekyll").write_text("")                    # GitHub Pages: serve _static/ and _images/ as they are
    return out, time.perf_counter() - t0


def site_bytes(out):
    return sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
