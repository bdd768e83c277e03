"""Sphinx math renderer that writes MathML at build time (latex2mathml): browsers draw it natively, so a page
shows its formulas offline, with no MathJax script fetched from a CDN at view time."""
import html

from docutils import nodes
from latex2mathml.converter import convert
from sphinx.util import logging

log = logging.getLogger(__name__)


def to_mathml(latex, display, where):
    try:
        return convert(latex, display=display)
    except Exception as e:  # noqa: BLE001  (latex2mathml raises many kinds): keep the page, show the source
        log.warning("math not converted to MathML (%s): %s", e, latex[:80], location=where)
        return f'<code class="math-source">{html.escape(latex)}</code>'


def visit_math(self, node):
    self.body.append(f'<span class="math">{to_mathml(node.astext(), "inline", node)}</span>')
    raise nodes.SkipNode


def visit_displaymath(self, node):
    latex = node.astext().strip()    # amsmath environments (nowrap) arrive whole: \begin{align}...\end{align}
    num = f'<span class="eqno">({node["number"]})</span>' if node.get("number") else ""
    self.body.append(f'<div class="math">{num}{to_mathml(latex, "block", node)}</div>')
    raise nodes.SkipNode


def setup(app):
    app.add_html_math_renderer("mathml", (visit_math, None), (visit_displaymath, None))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
