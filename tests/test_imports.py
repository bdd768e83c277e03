"""The helpers import graph has no cycles, counting imports inside functions too (a function-level import
is how a cycle hides), and every helpers module imports in a fresh interpreter."""
import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KNOWN = set()  # cycles tolerated for now: none


def modules():
    """helpers.x.y -> its file, for every module of the helpers package."""
    out = {}
    for p in sorted((ROOT / "helpers").rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(path, known):
    """helpers modules that path imports, anywhere in the file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]  # `from helpers import hf`
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan), as frozensets."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def graph():
    mods = modules()
    return {m: imports(p, mods) - {m} for m, p in mods.items()}


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_helpers():
    g = graph()
    assert "helpers.checkpoint" in g and g["helpers.checkpoint"]        # the graph is really built
    found = [sorted(c) for c in cycles(g) if c not in KNOWN]
    assert not found, f"import cycles among helpers modules: {found}"


def test_loaders_share_one_model_dir_module():
    g = graph()
    assert "helpers.model_dir" in g["helpers.tokenizer"] and "helpers.tokenizer" in g["helpers.checkpoint"]
    assert not {"helpers.checkpoint", "helpers.hf"} & g["helpers.tokenizer"]
    assert "helpers.checkpoint" not in g["helpers.hf"]


def test_every_helpers_module_imports_in_a_fresh_interpreter():
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nprint('ok')"
    run = subprocess.run([sys.executable, "-c", code, *modules()], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"})
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


def test_old_import_paths_still_work():
    from helpers import sampling, viz
    from helpers.checkpoint import is_llama3_8b, load_checkpoint, write_checkpoint  # noqa: F401
    from helpers.demo import demo_prompt  # noqa: F401
    from helpers.hf import bytes_to_unicode, load_hf_dir, original_dir, weight_files  # noqa: F401
    from helpers.model import KVCache, forward, generate, kept_distribution  # noqa: F401
    from helpers.random_checkpoint import write_checkpoint as w2
    from helpers.tokenizer import default_tokenizer_path, load_tokenizer  # noqa: F401
    from helpers.viz import Explorer, plot_attention  # noqa: F401
    assert w2 is write_checkpoint and sampling.sample_next is kept_distribution.__globals__["sample_next"]
    assert viz.Trace.__module__ == "helpers.viz.data" and viz.Explorer.__module__ == "helpers.viz.explorer"
