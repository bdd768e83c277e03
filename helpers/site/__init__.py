"""The static course site: `python -m helpers.site` builds `_build/site/` (Sphinx + MyST-NB) from the notebooks'
stored outputs, with the attention explorer drawn in the browser (static/explorer.js) from explorer_data's JSON.

- build.py:  stage the sources (index from the README's table, explorer page), run Sphinx, write the data
- conf.py:   Sphinx settings (no execution, MathML maths, alabaster theme)
- mathml.py: the maths renderer (LaTeX -> MathML at build time: works offline)
"""
