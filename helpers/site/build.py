"""Build the static course site: stage the notebooks (stored outputs, never executed) and guides with a generated
index and explorer page, export the explorer's attention data, run Sphinx + MyST-NB (conf.py here).

Staging rewrites only copies under _build/: the README's notebook table becomes the index (reading order),
the notebook 11 widget output becomes the kernel-free explorer (also shown after 10's first attention map), other
widget outputs (progress bars) are dropped.
"""
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from helpers.viz import explorer_data

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NOTEBOOKS = ROOT / "notebooks"
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


def index_md(rows):
    names = [r[1] for r in rows]
    table = [f"| {num} | [{name}]({name}.ipynb) |{rest}" for num, name, rest in rows]
    others = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb") if p.stem not in names)  # not in the table yet
    toc = names + others + ["explorer", *[Path(g).stem for g in GUIDES]]
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


def explorer_md():
    return "\n".join([
        "# Attention explorer", "",
        "Attention of every layer and head of the model for a few stored prompts, recorded when this site was",
        "built (the same forward pass as notebook [11](11_explorer.ipynb), probabilities rounded to 3 digits).",
        "Pick a prompt, layer, head and view; hover a cell for its query/key pair and value. *probabilities*:",
        "softmax of the scores, one row per query; *scores*: `q·k/√head_dim` of the pairs the causal mask lets",
        "through; *head types*: every head of the model at once, named by where its attention goes",
        "(`bos`, `prev`, `self`, `spread`, `mixed`: notebook [10](10_see_inside.ipynb)); click a head to open it.", "",
        "```{raw} html", EXPLORER_DIV, "```", ""])


def stage_notebook(src, dst):
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
            nb["cells"].insert(at + 1, {"cell_type": "markdown", "id": "site-explorer", "metadata": {}, "source": [
                "**In your browser:** the same maps for every layer and head and a few prompts, recorded when this ",
                "site was built ([the explorer](explorer.md)):\n\n", EXPLORER_DIV, "\n"]})
    dst.write_text(json.dumps(nb))


def stage(src_dir, readme=ROOT / "README.md"):
    """Write the Sphinx source tree into src_dir (emptied first)."""
    shutil.rmtree(src_dir, ignore_errors=True)
    src_dir.mkdir(parents=True)
    for nb in sorted(NOTEBOOKS.glob("*.ipynb")):
        stage_notebook(nb, src_dir / nb.name)
    for g in GUIDES:
        shutil.copy(NOTEBOOKS / g, src_dir / g)
    (src_dir / "index.md").write_text(index_md(reading_order(readme)))
    (src_dir / "explorer.md").write_text(explorer_md())


def launch_links(app, pagename, templatename, context, doctree):
    """"download / open in JupyterLab / open in Colab" on every notebook page (template: templates/page.html)."""
    if not (Path(app.srcdir) / f"{pagename}.ipynb").exists():
        context["launch"] = None
        return
    repo = os.environ.get("LLAMA3_SITE_GITHUB", "").strip("/")   # owner/name on GitHub, for Colab's link
    context["launch"] = {"ipynb": f"notebooks/{pagename}.ipynb", "lab": LAB.format(name=pagename),
                         "colab": COLAB.format(repo=repo, name=pagename) if repo else
                         "https://colab.research.google.com/", "github": repo}


def build(out=ROOT / "_build" / "site", work=ROOT / "_build" / "site-src", quiet=True, models=None):
    """Stage, run Sphinx, export the explorer data of `models` (default: all of explorer_data.MODELS that load);
    returns (out, seconds). Raises on Sphinx errors."""
    from sphinx.application import Sphinx   # here: importing helpers.site stays cheap
    t0 = time.perf_counter()
    out, work = Path(out), Path(work)
    stage(work / "src")
    shutil.rmtree(out, ignore_errors=True)
    app = Sphinx(str(work / "src"), str(HERE), str(out), str(work / "doctrees"), "html",
                 status=None if quiet else sys.stdout, warning=sys.stderr, freshenv=True)
    app.connect("html-page-context", launch_links)
    app.build()
    if app.statuscode:
        raise RuntimeError(f"sphinx failed (status {app.statuscode}); run `python -m helpers.site -v` to see why")
    explorer_data.write(out / DATA, models=models)
    (out / "notebooks").mkdir(exist_ok=True)
    for nb in NOTEBOOKS.glob("*.ipynb"):                  # the originals, for "download the notebook"
        shutil.copy(nb, out / "notebooks" / nb.name)
    (out / ".nojekyll").write_text("")                    # GitHub Pages: serve _static/ and _images/ as they are
    return out, time.perf_counter() - t0


def site_bytes(out):
    return sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
