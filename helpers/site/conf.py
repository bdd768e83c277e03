"""Sphinx configuration of the course site (helpers.site.build stages the sources and runs Sphinx with it)."""
project = "llama3-by-hand"
author = "llama3-by-hand contributors"
copyright = "llama3-by-hand contributors, MIT licence"

extensions = ["myst_nb", "helpers.site.mathml"]
html_math_renderer = "mathml"          # formulas as MathML at build time: no MathJax, no network at view time
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"              # stored outputs only: no kernel, seconds not minutes
nb_ipywidgets_js = {}                  # no widget scripts from a CDN; the explorer is our own module
nb_merge_streams = True
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type", "misc.highlighting_failure"]

exclude_patterns = []
templates_path = ["templates"]
html_static_path = ["static"]
html_css_files = ["site.css", "explorer.css"]
html_js_files = [("explorer.js", {"type": "module"})]
html_theme = "alabaster"
html_theme_options = {"page_width": "1320px", "sidebar_width": "230px", "body_max_width": "none",
                      "font_family": "system-ui, -apple-system, 'Segoe UI', sans-serif",
                      "head_font_family": "system-ui, -apple-system, 'Segoe UI', sans-serif",
                      "show_relbars": True}
html_sidebars = {"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}
html_title = "llama3-by-hand"
html_favicon = "static/favicon.svg"   # served here: no 404 for /favicon.ico in the console
html_copy_source = False
html_show_sourcelink = False
pygments_style = "friendly"
