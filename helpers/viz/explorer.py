"""The interactive explorer of notebook 11: prompt, layer, head and view, computed lazily (Trace)."""
import matplotlib.pyplot as plt
import torch

from helpers.viz.data import Trace, head_stats, logit_lens, token_labels
from helpers.viz.plots import (plot_attention, plot_attention_scores, plot_heads, plot_logit_lens, plot_mask_softmax,
                               plot_overview)

VIEWS = ("scores", "masked", "probs", "grid", "lens", "overview")
FIT = (11, 6)  # inches: a view plus the controls fits a 1400x900 window at 100 px per inch


class Explorer:
    """Pick a prompt, layer, head and view; layers are computed lazily (Trace) and cached per prompt.

    figure(...) renders a view as a Figure (the static fallback); widget(...) wraps it in ipywidgets.
    Views: scores, masked (scores + mask, then softmax), probs, grid (all heads), lens (logit lens up
    to the layer), overview (head statistics of the layers computed so far).
    """

    def __init__(self, weights, args, tokenizer, keep=4, fit=FIT):
        self.weights, self.args, self.tok, self.keep, self.fit = weights, args, tokenizer, keep, fit
        self.traces = {}

    def trace(self, prompt):
        if prompt not in self.traces:
            if len(self.traces) >= self.keep:
                self.traces.pop(next(iter(self.traces)))    # forget the oldest prompt
            self.traces[prompt] = Trace(self.weights, self.args, self.tok.encode(prompt))
        return self.traces[prompt]

    def figure(self, prompt, layer=0, head=0, view="probs"):
        """one view as a Figure, shrunk to fit self.fit inches (smaller tick labels where it had to shrink)."""
        fig = self._figure(prompt, layer, head, view)
        w, h = fig.get_size_inches()
        s = min(1.0, self.fit[0] / w, self.fit[1] / h)
        fig.set_size_inches(w * s, h * s)
        if s < 0.8:
            for ax in fig.axes:
                ax.tick_params(labelsize=8)
        return fig

    def _figure(self, prompt, layer, head, view):
        if not prompt.strip():  # encode("") is not empty (it holds <|begin_of_text|>): say so instead of a 1x1 map
            raise ValueError("the prompt is empty: type some text into the prompt box")
        if view not in VIEWS:
            raise ValueError(f"view={view!r} is not one of {VIEWS}")
        if not 0 <= head < self.args.n_heads:
            raise ValueError(f"head {head} does not exist: this model has n_heads={self.args.n_heads} "
                             f"(0..{self.args.n_heads - 1})")
        tr = self.trace(prompt)
        labels = token_labels(self.tok, tr.tokens)
        rec = tr.layer(layer)
        where = f"layer {layer}, head {head}"
        if view == "scores":
            return plot_attention_scores(rec["scores"][head], labels, f"{where}: scores before the mask")
        if view == "masked":
            return plot_mask_softmax(rec["scores"][head], labels, where)
        if view == "probs":
            return plot_attention(rec["attn"][head], labels, f"{where}: attention")
        if view == "grid":
            return plot_heads(rec["attn"], labels, f"layer {layer}: all {self.args.n_heads} heads")
        if view == "lens":
            resid = torch.stack(tr.run_to(layer)).cpu()                  # [layer+2, T, dim]
            return plot_logit_lens(logit_lens(self.weights, self.args, resid), self.tok, labels)
        for i in range(layer + 1):
            tr.layer(i)
        stats = head_stats(torch.stack([tr.records[i]["attn"] for i in range(layer + 1)]))
        return plot_overview(stats, title=f"head statistics, layers 0..{layer}")

    def show(self, prompt, layer=0, head=0, view="probs"):
        """Static fallback: render one view inline (no widgets needed)."""
        from IPython.display import display
        fig = self.figure(prompt, layer, head, view)
        display(fig)
        plt.close(fig)

    def widget(self, prompt, layer=0, head=0, view="probs"):
        """ipywidgets UI: prompt box, layer and head sliders, view buttons; redraws on every change."""
        import ipywidgets as w
        from IPython.display import display
        text = w.Textarea(value=prompt, description="prompt", continuous_update=False,
                          layout=w.Layout(width="95%"))
        lay = w.IntSlider(value=layer, min=0, max=self.args.n_layers - 1, description="layer",
                          continuous_update=False)
        hd = w.IntSlider(value=head, min=0, max=self.args.n_heads - 1, description="head",
                         continuous_update=False)
        vw = w.ToggleButtons(options=VIEWS, value=view, description="view")
        out = w.Output()

        def render(_=None):
            with out:
                out.clear_output(wait=True)
                try:
                    fig = self.figure(text.value, lay.value, hd.value, vw.value)
                except ValueError as e:          # e.g. an empty prompt: say why, keep the UI alive
                    print(e)
                    return
                display(fig)
                plt.close(fig)

        for c in (text, lay, hd, vw):
            c.observe(render, names="value")
        render()
        return w.VBox([text, w.HBox([lay, hd]), vw, out])
