"""See inside the model (notebooks 10 and 11): attention maps, per-head statistics, the logit lens, RoPE, RMSNorm.

- data.py:      collect, Trace, head_stats, logit_lens, token_labels, ... -> tensors (testable without pixels)
- plots.py:     plot_* of attention and the logit lens -> matplotlib Figures
- rope_norm.py: RoPE and RMSNorm, their numbers and pictures
- explorer.py:  Explorer, the interactive widget (with a static fallback)

`from helpers import viz; viz.X` and `from helpers.viz import X` reach every public name.
"""
from helpers.viz.data import (LABEL_CHARS, SHORT_SPECIAL, STATS, Trace, blocked, collect, collect_bytes,
                              head_stats, head_types, induction_stat, layer_labels, lens_table, logit_lens, stats_table,
                              token_labels, too_big, top_heads)
from helpers.viz.explorer import FIT, VIEWS, Explorer
from helpers.viz.plots import (MASKED, MAX_TICKS, MAX_WIDTH, heatmap, plot_attention, plot_attention_scores, plot_heads,
                               plot_logit_lens, plot_mask_softmax, plot_overview)
from helpers.viz.rope_norm import (head_qk, norm_stages, plot_norm_hist, plot_rope_distance, plot_rope_rotation,
                                   plot_rope_spectrum, rope_distance_scores, rope_spectrum, rope_trajectory)

__all__ = ["FIT", "LABEL_CHARS", "MASKED", "MAX_TICKS", "MAX_WIDTH", "SHORT_SPECIAL", "STATS", "VIEWS",
           "Explorer", "Trace", "blocked", "collect", "collect_bytes", "head_qk", "head_stats", "head_types",
           "heatmap", "induction_stat", "layer_labels", "lens_table", "logit_lens", "norm_stages",
           "plot_attention", "plot_attention_scores", "plot_heads", "plot_logit_lens", "plot_mask_softmax",
           "plot_norm_hist", "plot_overview", "plot_rope_distance", "plot_rope_rotation", "plot_rope_spectrum",
           "rope_distance_scores", "rope_spectrum", "rope_trajectory", "stats_table", "token_labels",
           "too_big", "top_heads"]
