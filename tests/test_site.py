"""The static course site (helpers.site) and the explorer's recorded data (helpers.viz.explorer_data).

Quick: the exported numbers are the recorded forward pass's, the staged sources (index from the README's table,
widget outputs swapped). Slow (test_built_site*): build the site, serve it over http on 127.0.0.1 and open every
page in headless Chromium (Debian's chromium + chromium-driver through selenium): pages and images load, no
console errors, no request leaves the machine, and every explorer control redraws the view.
"""
import functools
import http.server
import json
import os
import re
import shutil
import threading
from pathlib import Path

import pytest

from helpers.checkpoint import load_checkpoint
from helpers.params import CheckpointError
from helpers.site import build as site
from helpers.tokenizer import load_tokenizer
from helpers.viz import collect, head_stats, head_types
from helpers.viz import explorer_data as xd

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = ROOT / "_build" / "screenshots"   # the explorer at 1400x900, for a person to look at


@pytest.fixture(scope="module")
def model():
    weights, args = load_checkpoint()
    return weights, args, load_tokenizer()


# ---------------------------------------------------------------- the recorded data

def test_export_holds_the_recorded_forward_pass(model):
    weights, args, tok = model
    text = "Now is the winter of our discontent"
    p = xd.prompt_entry(weights, args, tok, text)
    rec = collect(weights, args, tok.encode(text))
    T = len(p["ids"])
    assert p["ids"] == tok.encode(text) and len(p["tokens"]) == T
    assert len(p["probs"]) == args.n_layers and len(p["probs"][0]) == args.n_heads
    assert len(p["probs"][0][0]) == T * (T + 1) // 2                       # the causal lower triangle only
    for layer, head in [(0, 0), (args.n_layers - 1, args.n_heads - 1)]:
        for t, s in [(0, 0), (T - 1, 0), (T - 1, T - 1), (T // 2, T // 3)]:
            assert abs(xd.cell(p, "probs", layer, head, t, s) - float(rec["attn"][layer, head, t, s])) <= 5e-4
            assert abs(xd.cell(p, "scores", layer, head, t, s) - float(rec["scores"][layer, head, t, s])) <= 5e-3
    rows = [sum(xd.cell(p, "probs", 1, 1, t, s) for s in range(t + 1)) for t in range(T)]
    assert max(abs(r - 1) for r in rows) <= T * 5e-4                      # each query's row still sums to 1
    stats = head_stats(rec["attn"])
    assert p["types"] == head_types(stats)
    assert p["stats"][2][1] == [round(float(stats[k][2, 1]), 3) for k in xd.STATS]
    with pytest.raises(ValueError, match="not a visible pair"):
        xd.cell(p, "probs", 0, 0, 1, 2)                                   # above the diagonal: masked, not stored


def test_export_refuses_bad_prompts(model):
    with pytest.raises(ValueError, match="empty prompt"):
        xd.prompt_entry(*model, "  ")
    with pytest.raises(ValueError, match="max_tokens=40"):
        xd.prompt_entry(*model, "to be or not " * 30)


def test_export_is_compact_json(tmp_path):
    path = xd.write(tmp_path / "a.json", models=["llama3-tiny"])
    data = json.loads(path.read_text())
    assert path.stat().st_size < 300_000
    assert [m["name"] for m in data["models"]] == ["llama3-tiny"]
    m = data["models"][0]
    assert [p["text"] for p in m["prompts"]] == list(xd.PROMPTS)
    assert all(isinstance(v, int) and 0 <= v <= data["prob_scale"] for v in m["prompts"][0]["probs"][0][0])
    with pytest.raises(ValueError, match="no explorer model 'llama4'"):
        xd.export(["llama4"])


def test_export_leaves_out_only_an_optional_model_that_cannot_load(monkeypatch, model):
    def missing():
        raise CheckpointError("no such file: x.gguf")
    said = []
    monkeypatch.setattr(xd, "MODELS", {"a": ("A", lambda: model, xd.PROMPTS[:1], False),
                                       "b": ("B", missing, xd.PROMPTS[:1], True)})
    data = xd.export(log=said.append)
    assert [m["name"] for m in data["models"]] == ["a"] and "b left out" in said[0] and "x.gguf" in said[0]
    monkeypatch.setitem(xd.MODELS, "b", ("B", missing, xd.PROMPTS[:1], False))
    with pytest.raises(CheckpointError, match="x.gguf"):
        xd.export(log=said.append)


# ---------------------------------------------------------------- staged sources

def test_index_follows_the_readme_table(tmp_path):
    site.stage(tmp_path)
    index = (tmp_path / "index.md").read_text()
    readme = [m[1] for m in re.finditer(r"^\| *\w+ *\| *`(\w+)`", (ROOT / "README.md").read_text(), re.M)]
    linked = re.findall(r"^\| \w+ \| \[(\w+)\]\(\1\.ipynb\)", index, re.M)
    assert linked == readme and len(linked) >= 15
    for page in ["explorer", "glossary", "teachers_guide", *linked]:
        assert (tmp_path / f"{page}.md").exists() or (tmp_path / f"{page}.ipynb").exists(), page
        assert f"\n{page}\n" in index                                       # in the toctree


def test_staging_swaps_widget_outputs_for_the_explorer(tmp_path):
    site.stage(tmp_path)
    for nb in tmp_path.glob("*.ipynb"):
        text = nb.read_text()
        assert site.WIDGET not in text, nb.name                            # no kernel, no widgets
    assert "data-llama3-explorer" in (tmp_path / "11_explorer.ipynb").read_text()
    assert "data-llama3-explorer" in (tmp_path / "explorer.md").read_text()
    assert "data-llama3-explorer" in (tmp_path / "10_see_inside.ipynb").read_text()
    orig = json.loads((ROOT / "notebooks" / "05_attention.ipynb").read_text())     # the others: unchanged
    assert json.loads((tmp_path / "05_attention.ipynb").read_text())["cells"] == orig["cells"]


def test_zh_pages_are_staged_from_notebooks_zh(tmp_path):
    site.stage(tmp_path, lang="zh")
    en = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(p.name for p in tmp_path.glob("*.ipynb")) == en
    index = (tmp_path / "index.md").read_text()
    readme = [m[1] for m in re.finditer(r"^\| *\w+ *\| *`(\w+)`", (ROOT / "README.md").read_text(), re.M)]
    assert re.findall(r"^\| \w+ \| \[[^]]+\]\((\w+)\.ipynb\)", index, re.M) == readme
    assert "[05 · " in index and "注意力" in index                          # titles from the zh notebooks
    zh05 = json.loads((tmp_path / "05_attention.ipynb").read_text())
    assert zh05["cells"] == json.loads((ROOT / "notebooks" / "zh" / "05_attention.ipynb").read_text())["cells"]
    assert (tmp_path / "glossary.md").read_text().startswith("#")        # the translation marker is dropped
    assert "data-llama3-explorer" in (tmp_path / "explorer.md").read_text()
    zh10 = json.loads((tmp_path / "10_see_inside.ipynb").read_text())["cells"]
    assert any("在浏览器中" in "".join(c["source"]) and site.EXPLORER_DIV in "".join(c["source"]) for c in zh10)


def test_reading_order_needs_the_table(tmp_path):
    (tmp_path / "README.md").write_text("# no table here\n")
    with pytest.raises(ValueError, match="no notebook table"):
        site.reading_order(tmp_path / "README.md")


# ---------------------------------------------------------------- the built site, in a browser

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out, secs = site.build(tmp_path_factory.mktemp("site") / "site", tmp_path_factory.mktemp("site-src"))
    return out


@pytest.fixture(scope="module")
def server(built):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def driver():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    chromium, chromedriver = (shutil.which(p) or shutil.which(Path(p).name) for p in (CHROMIUM, CHROMEDRIVER))
    if not (chromium and chromedriver):
        why = (f"no Chromium: {CHROMIUM} or {CHROMEDRIVER} not found "
               "(Debian/Ubuntu, as root: apt-get install chromium chromium-driver)")
        if os.environ.get("LLAMA3_REQUIRE_BROWSER"):     # .ci/run sets it: there a missing browser is a failure
            pytest.fail(why)
        pytest.skip(why)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900",
              "--disable-extensions", "--no-first-run", "--disable-background-networking"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=chromedriver)
    d = webdriver.Chrome(options=opts, service=service)
    d.set_page_load_timeout(30)
    yield d
    d.quit()


def open_page(driver, url):
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(url)
    WebDriverWait(driver, 20).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && [...document.images].every(i => i.complete)"))


def severe(driver):
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


@pytest.mark.slow   # builds the site (conftest.py SLOW: tests/test_site.py::test_built_site)
def test_built_site_has_every_page_and_only_local_resources(built):
    pages = {p.relative_to(built).as_posix() for p in built.rglob("*.html")}
    names = [p.stem for p in (ROOT / "notebooks").glob("*.ipynb")] + ["glossary", "teachers_guide", "explorer"]
    assert {"index.html", *(f"{n}.html" for n in names)} <= pages
    assert (built / site.DATA).exists() and (built / "notebooks" / "05_attention.ipynb").exists()
    for page in pages:
        html = (built / page).read_text()
        remote = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(?:https?:)?//[^"]+', html)
        assert not remote, (page, remote[:3])                            # works offline: nothing from a CDN
        assert 'href="/' not in html and 'src="/' not in html, page      # relative links: any static host
    nb09 = (built / "09_train_your_own.html").read_text()
    assert "<math" in nb09 and "math-source" not in nb09                  # maths as MathML
    nb05 = (built / "05_attention.html").read_text()
    assert 'class="highlight' in nb05 and "<img" in nb05                   # code highlighted, figures embedded
    assert 'href="06_ffn_swiglu.html"' in (built / "index.html").read_text()
    assert 'href="01_tokenizer.html"' in (built / "00_checkpoint.html").read_text()   # notebook links -> pages
    assert 'href="glossary.html"' in (built / "teachers_guide.html").read_text()
    assert 'href="notebooks/05_attention.ipynb"' in nb05 and "colab.research.google.com" in nb05
    # the Chinese edition under zh/, every page linked to its counterpart
    assert {f"zh/{n}.html" for n in ["index", *names]} <= pages
    zh05 = (built / "zh" / "05_attention.html").read_text()
    assert 'lang="zh-CN"' in zh05 and 'href="../05_attention.html"' in zh05 and "下载笔记本" in zh05
    assert 'href="zh/05_attention.html"' in nb05 and 'href="zh/index.html"' in (built / "index.html").read_text()
    assert (built / "zh" / "notebooks" / "05_attention.ipynb").read_bytes() == \
        (ROOT / "notebooks" / "zh" / "05_attention.ipynb").read_bytes()
    assert (built / "zh" / site.DATA).read_bytes() == (built / site.DATA).read_bytes()
    assert not (built / "jupyter_execute").exists()                       # myst-nb's scratch stays out of the site


@pytest.mark.slow
def test_built_site_pages_load_in_chromium(driver, built, server):
    pages = sorted(p.relative_to(built).as_posix() for p in built.rglob("*.html"))
    driver.get_log("browser")
    for page in pages:
        open_page(driver, server + page)
        broken = driver.execute_script(
            "return [...document.images].filter(i => !(i.naturalWidth > 0)).map(i => i.src)")
        assert not broken, (page, broken)
        assert driver.title, page
        assert not severe(driver), (page, severe(driver))
    open_page(driver, server + "05_attention.html")
    assert driver.execute_script("return document.images.length") >= 2
    # search works in both languages (the zh index is segmented by jieba), each linking to the right pages
    from urllib.parse import quote

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    for page, query, hit in [("search.html", "grouped-query", "05_attention.html"),
                             ("zh/search.html", "注意力", "zh/05_attention.html")]:
        open_page(driver, server + page + "?q=" + quote(query))
        WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results li a"))
        links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#search-results li a")]
        assert any(link.split("?")[0].endswith(hit) for link in links), (query, links[:5])
        assert not severe(driver), (page, severe(driver))


def view_key(driver):
    return driver.execute_script(
        "const f = document.querySelector('[data-llama3-explorer] .llx-figure');"
        "return f.innerHTML.length + ':' + f.querySelector('svg').getAttribute('data-view') + ':' +"
        "[...f.querySelectorAll('rect[fill]')].map(r => r.getAttribute('fill')).join('|')")


@pytest.mark.slow
@pytest.mark.parametrize("page", ["explorer.html", "11_explorer.html", "10_see_inside.html", "zh/explorer.html"])
def test_built_site_explorer_controls_redraw(driver, built, server, page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",     # a 1400x900 viewport, whatever the window
                           {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    open_page(driver, server + page)
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-llama3-explorer][data-ready]"))
    root = driver.find_element(By.CSS_SELECTOR, "[data-llama3-explorer]")
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = page.replace("/", "-")[:-5]     # zh/explorer.html -> zh-explorer
    if page != "explorer.html":                                       # the explorer page: from its title down
        driver.execute_script("arguments[0].scrollIntoView()", root)
    driver.save_screenshot(str(SHOTS / f"{shot}-probs.png"))

    def slide(name, value):
        driver.execute_script("const e = arguments[0]; e.value = arguments[1];"
                              "e.dispatchEvent(new Event('input', {bubbles: true}))",
                              root.find_element(By.NAME, name), str(value))

    n_layers = int(root.find_element(By.NAME, "layer").get_attribute("max")) + 1
    n_heads = int(root.find_element(By.NAME, "head").get_attribute("max")) + 1
    assert n_layers >= 2 and n_heads >= 2
    several = root.find_element(By.NAME, "model").is_displayed()       # a second model (the real SmolLM2) exported
    steps = [("prompt", lambda: Select(root.find_element(By.NAME, "prompt")).select_by_index(3)),
             ("layer", lambda: slide("layer", n_layers - 1)),
             ("head", lambda: slide("head", n_heads - 1)),
             ("view scores", lambda: Select(root.find_element(By.NAME, "view")).select_by_value("scores")),
             ("view types", lambda: Select(root.find_element(By.NAME, "view")).select_by_value("types")),
             ("layer in types", lambda: slide("layer", 0)),
             ("head in types", lambda: slide("head", 0))]
    if several:
        steps.append(("model", lambda: Select(root.find_element(By.NAME, "model")).select_by_index(1)))
        steps.append(("model back", lambda: Select(root.find_element(By.NAME, "model")).select_by_index(0)))
    for what, act in steps:
        before = view_key(driver)
        act()
        assert view_key(driver) != before, f"{page}: changing {what} did not redraw the view"
        if what in ("view scores", "model"):
            driver.save_screenshot(str(SHOTS / f"{shot}-{what.split()[-1]}.png"))
    driver.save_screenshot(str(SHOTS / f"{shot}-types.png"))
    # a click on a head in the summary opens its map; hovering a cell names the token pair and the value
    cell = root.find_element(By.CSS_SELECTOR, "rect[data-layer='1'][data-head='1']")
    cell.click()
    assert Select(root.find_element(By.NAME, "view")).first_selected_option.get_attribute("value") == "probs"
    assert root.find_element(By.NAME, "layer").get_attribute("value") == "1"
    cells = root.find_elements(By.CSS_SELECTOR, "rect.llx-cell[data-tip]")
    ActionChains(driver).move_to_element(cells[len(cells) // 2]).perform()
    tip = root.find_element(By.CSS_SELECTOR, ".llx-tip")
    assert tip.is_displayed() and re.search(r"query \d+ .* → key \d+ .*: p = [01]\.\d{3}$", tip.text), tip.text
    assert not severe(driver), severe(driver)
    if page == "explorer.html":     # the README's picture: the repeated-words prompt, the first previous-token head
        Select(root.find_element(By.NAME, "prompt")).select_by_index(3)
        Select(root.find_element(By.NAME, "view")).select_by_value("types")
        prev = root.find_elements(By.CSS_SELECTOR, "rect[data-layer][data-tip*=': prev']")
        if prev:
            prev[0].click()
        ActionChains(driver).move_to_element(root.find_element(By.CSS_SELECTOR, ".llx-caption")).perform()  # no hover
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(SHOTS / "explorer-readme.png"))
