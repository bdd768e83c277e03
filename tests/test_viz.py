"""helpers.viz: the data behind every figure (not pixels), on the default model and a random one of
another shape (GQA with 2 kv heads, odd sizes)."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import viz  # noqa: E402
from helpers.checkpoint import load_checkpoint  # noqa: E402
from helpers.model import DEVICE, apply_rope, forward, fp32, rms_norm, rope_rotations  # noqa: E402
from helpers.random_checkpoint import write_random_checkpoint  # noqa: E402

PROMPT = "To be, or not to be, that is the question: to be is to be."


@pytest.fixture(scope="module", params=["default", "random"])
def model(request, tmp_path_factory):
    if request.param == "default":
        return load_checkpoint()
    d = tmp_path_factory.mktemp("viz_random")
    write_random_checkpoint(d, seed=3, dim=96, n_layers=3, n_heads=6, n_kv_heads=2, vocab_size=128256,
                            multiple_of=32)
    return load_checkpoint(d)


@pytest.fixture(scope="module")
def run(model, tok):
    weights, args = model
    ids = tok.encode(PROMPT)
    return weights, args, ids, viz.collect(weights, args, ids)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_collect_shapes_and_logits(run):
    weights, args, ids, c = run
    L, H, T = args.n_layers, args.n_heads, len(ids)
    assert c["attn"].shape == c["scores"].shape == (L, H, T, T)
    assert c["resid"].shape == (L + 1, T, args.dim)
    torch.testing.assert_close(c["logits"], forward(weights, args, ids).cpu())


def test_attention_rows_softmax_and_mask(run):
    _, _, ids, c = run
    T = len(ids)
    hidden = viz.blocked(T)
    torch.testing.assert_close(c["attn"].sum(-1), torch.ones(c["attn"].shape[:-1]))
    assert (c["attn"][..., hidden] == 0).all()
    assert (c["attn"][..., ~hidden] > 0).all()
    want = torch.softmax(c["scores"].masked_fill(hidden, float("-inf")), dim=-1)
    torch.testing.assert_close(c["attn"], want)


def test_blocked_with_offset():
    b = viz.blocked(2, 5)          # 2 new queries at positions 3, 4 over 5 keys
    assert b.tolist() == [[False, False, False, False, True], [False] * 5]


def test_trace_is_lazy_and_matches_collect(run):
    weights, args, ids, c = run
    tr = viz.Trace(weights, args, ids)
    i = args.n_layers - 2
    rec = tr.layer(i)
    assert tr.n_done == i + 1                      # layers 0..i ran, nothing beyond
    assert sorted(tr.records) == [i]               # attention kept only for the layer asked for
    torch.testing.assert_close(rec["attn"], c["attn"][i])
    torch.testing.assert_close(rec["scores"], c["scores"][i])
    torch.testing.assert_close(rec["resid_out"], c["resid"][i + 1])
    tr.run_to(args.n_layers - 1)
    torch.testing.assert_close(torch.stack(tr.resid).cpu(), c["resid"])
    with pytest.raises(ValueError, match="n_layers"):
        tr.layer(args.n_layers)


def test_head_stats_ranges_and_bounds(run):
    _, args, ids, c = run
    T = len(ids)
    s = viz.head_stats(c["attn"])
    for k in ("bos", "prev", "self", "entropy"):
        assert s[k].shape == (args.n_layers, args.n_heads)
        assert ((s[k] >= 0) & (s[k] <= 1 + 1e-5)).all(), k
    assert (s["entropy_nats"] >= 0).all()
    assert (s["entropy_nats"] <= torch.log(torch.arange(2, T + 1.0)).mean() + 1e-5).all()
    # one value by hand: mass on the previous token, layer 0 head 0
    a = c["attn"][0, 0]
    assert math.isclose(float(s["prev"][0, 0]), sum(float(a[t, t - 1]) for t in range(1, T)) / (T - 1),
                        rel_tol=1e-5)
    types = viz.head_types(s)
    assert len(types) == args.n_layers and all(len(r) == args.n_heads for r in types)
    assert set(sum(types, [])) <= {"bos", "prev", "self", "spread", "mixed"}
    top = viz.top_heads(s, "bos", k=3)
    assert top[0][2] == round(float(s["bos"].max()), 3)


def test_head_stats_on_known_patterns():
    T = 6
    eye = torch.eye(T)
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    prev[torch.arange(1, T), torch.arange(T - 1)] = 1
    uniform = torch.tril(torch.ones(T, T))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    s = viz.head_stats(torch.stack([eye, prev, uniform]))
    torch.testing.assert_close(s["self"], torch.tensor([1.0, 0.0, float((1 / torch.arange(2, T + 1.0)).mean())]))
    torch.testing.assert_close(s["prev"][:2], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(s["entropy"], torch.tensor([0.0, 0.0, 1.0]))
    assert viz.head_types({k: v[None] for k, v in s.items()}) == [["self", "prev", "spread"]]
    # induction: the second "a" (pos 3) should look at what followed the first "a" (pos 1)
    ids = [9, 1, 2, 1, 2, 3]
    ind = torch.zeros(T, T)
    ind[:, 0] = 1
    ind[3] = 0
    ind[3, 2] = 1
    assert float(viz.induction_stat(ind, ids)) == 0.5     # queries 3 (hit) and 4 (miss: looks at 0)


def test_logit_lens_last_row_is_the_prediction(run, tok):
    weights, args, ids, c = run
    lens = viz.logit_lens(weights, args, c["resid"], rows_per_call=7)   # odd chunks on purpose
    R, T = args.n_layers + 1, len(ids)
    assert lens["ids"].shape == lens["probs"].shape == lens["final_prob"].shape == (R, T)
    pred = c["logits"].argmax(-1)
    top = c["logits"].max(-1).values
    got = c["logits"].gather(-1, lens["ids"][-1][:, None])[:, 0]
    assert ((lens["ids"][-1] == pred) | (got == top)).all()             # equal, or an exact tie
    torch.testing.assert_close(lens["probs"][-1], torch.softmax(c["logits"], -1).max(-1).values)
    torch.testing.assert_close(lens["final_prob"][-1], lens["probs"][-1])
    assert ((lens["probs"] > 0) & (lens["probs"] <= 1)).all()
    assert (lens["final_prob"] <= lens["probs"] + 1e-6).all()           # top-1 is the most likely
    table = viz.lens_table(tok, lens)
    assert len(table.splitlines()) == R + 1 and tok.piece(int(pred[-1])).strip() in table.splitlines()[-1]


def test_rope_spectrum_trajectory_and_distance(run):
    weights, args, ids, c = run
    spec = viz.rope_spectrum(args)
    assert spec["freqs"].shape == (args.head_dim // 2,)
    assert (spec["freqs"].diff() < 0).all() and float(spec["freqs"][0]) == 1.0
    x = rms_norm(c["resid"][0], fp32(weights, "layers.0.attention_norm.weight").cpu(), args.norm_eps)
    q, k = viz.head_qk(weights, args, x, 0, args.n_heads - 1)
    assert q.shape == k.shape == (len(ids), args.head_dim)
    pos = torch.arange(20)
    traj = viz.rope_trajectory(q[-1], args, pos)
    assert traj.shape == (20, args.head_dim // 2)
    torch.testing.assert_close(traj.abs(), traj[:1].abs().expand(20, -1))       # rotation keeps length
    torch.testing.assert_close(torch.angle(traj[1] / traj[0]), spec["freqs"])   # one step = one freq
    d = torch.arange(0, 40)
    s = viz.rope_distance_scores(args, q[-1], k[0], d)                           # q at d, k at 0
    # q at 100+d and k at 100, rotated by hand: the same scores, only the distance matters
    kr = apply_rope(k[0].to(DEVICE).view(1, 1, -1), rope_rotations(args, torch.tensor([100]))).cpu()[0, 0]
    qr = apply_rope(q[-1].to(DEVICE).expand(40, 1, -1), rope_rotations(args, d + 100)).cpu()[:, 0]
    torch.testing.assert_close(qr @ kr / math.sqrt(args.head_dim), s, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(viz.rope_distance_scores(args, q[-1], k[0], d + 100), s)   # distance changed
    ones = torch.ones(args.head_dim)
    cos = viz.rope_distance_scores(args, ones, ones, d, cosine=True)
    assert math.isclose(float(cos[0]), 1.0, rel_tol=1e-5) and (cos.abs() <= 1 + 1e-5).all()


def test_norm_stages(run):
    weights, args, _, c = run
    w = weights["layers.1.attention_norm.weight"]
    st = viz.norm_stages(c["resid"][1], w, args.norm_eps)
    ms = c["resid"][1].pow(2).mean(-1)
    rms = st["normed"].pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, (ms / (ms + args.norm_eps)).sqrt())       # 1, but for eps
    assert (rms <= 1).all() and (rms > 0.5).all()
    torch.testing.assert_close(st["after"], rms_norm(c["resid"][1], w, args.norm_eps))
    torch.testing.assert_close(st["rms"], c["resid"][1].pow(2).mean(-1).add(args.norm_eps).sqrt())


def test_labels(tok):
    ids = tok.encode("a\nb  c")
    labels = viz.token_labels(tok, ids)
    assert labels[0] == "<bos>" and "\\n" in "".join(labels) and all(s.strip() for s in labels)
    assert viz.token_labels(tok, ids, numbered=True)[1].startswith("1:")
    assert viz.layer_labels(3) == ["embed", "layer 0", "layer 1"]
    ids = tok.encode(" Romeo,  Romeo", bos=False)                          # leading spaces are visible
    assert [tok.piece(i) for i in ids] == [" Romeo", ",", " ", " Romeo"]
    assert viz.token_labels(tok, ids) == ["␣Romeo", ",", "␣", "␣Romeo"]


def _image(ax):
    return ax.images[0].get_array()


def _data(arr):
    """the numbers behind an image, as fp32 torch."""
    return torch.as_tensor(arr.data).float()


def _labels(run, tok):
    _, _, ids, _ = run
    return viz.token_labels(tok, ids), len(ids), viz.blocked(len(ids))


def test_plot_attention_shows_the_probs(run, tok):
    labels, T, hidden = _labels(run, tok)
    attn = run[3]["attn"]
    fig = viz.plot_attention(attn[0, 0], labels)
    arr = _image(fig.axes[0])
    assert (arr.mask == hidden.numpy()).all()                            # masked cells are drawn apart
    torch.testing.assert_close(_data(arr), attn[0, 0])
    assert len(fig.axes[0].get_xticklabels()) == T


def test_plot_mask_softmax_shows_three_stages(run, tok):
    labels, _, hidden = _labels(run, tok)
    c = run[3]
    fig = viz.plot_mask_softmax(c["scores"][1, 0], labels)
    assert fig.get_size_inches()[0] <= 11                                # legible at notebook width
    raw, masked, probs = (_image(ax) for ax in fig.axes[:3])
    assert not raw.mask.any() and (masked.mask == hidden.numpy()).all()
    torch.testing.assert_close(_data(probs).masked_fill(hidden, 0), c["attn"][1, 0])


def test_plot_heads_shows_every_head(run, tok):
    labels, _, _ = _labels(run, tok)
    _, args, _, c = run
    fig = viz.plot_heads(c["attn"][-1], labels)
    imgs = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(imgs) == args.n_heads
    torch.testing.assert_close(_data(imgs[-1]), c["attn"][-1, -1])


def test_plot_overview_shows_head_stats(run):
    s = viz.head_stats(run[3]["attn"])
    fig = viz.plot_overview(s)
    torch.testing.assert_close(_data(_image(fig.axes[0])), s["bos"])


def test_plot_logit_lens_shows_probs_and_tokens(run, tok):
    labels, T, _ = _labels(run, tok)
    weights, args, _, c = run
    lens = viz.logit_lens(weights, args, c["resid"])
    fig = viz.plot_logit_lens(lens, tok, labels)
    torch.testing.assert_close(_data(_image(fig.axes[0])), lens["probs"])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == (args.n_layers + 1) * T


def test_plot_rope_spectrum_shows_wavelengths(run):
    args = run[1]
    fig = viz.plot_rope_spectrum(viz.rope_spectrum(args), args.max_seq_len)
    ydata = torch.tensor(fig.axes[0].lines[-2].get_ydata())
    torch.testing.assert_close(ydata, viz.rope_spectrum(args)["wavelength"])


def test_plot_norm_hist_counts_every_value(run):
    weights, args, ids, c = run
    st = viz.norm_stages(c["resid"][1], weights["layers.1.ffn_norm.weight"], args.norm_eps)
    fig = viz.plot_norm_hist(st)
    assert [int(sum(p.get_height() for p in ax.patches)) for ax in fig.axes] == [len(ids) * args.dim] * 3


def test_long_prompt_labels_are_thinned(run, tok):
    weights, args, _, _ = run
    ids = tok.encode(" ".join(["to be or not"] * 30))
    T = len(ids)
    fig = viz.plot_attention(torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1.0)[:, None],
                             viz.token_labels(tok, ids))
    ticks = fig.axes[0].get_xticklabels()
    assert len(ticks) <= viz.MAX_TICKS < T
    assert min(t.get_fontsize() for t in ticks) >= 5


def test_figures_fit_notebook_width(run, tok):
    """no figure wider than 11 inches, however long the prompt or many the heads: JupyterLab would shrink
    a wider one, labels and all"""
    weights, args, _, c = run
    ids = tok.encode(" ".join(["to be or not"] * 30))
    T = len(ids)
    attn = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1.0)[:, None]
    labels = viz.token_labels(tok, ids)
    many = viz.head_stats(torch.rand(32, 32, 8, 8))                    # an 8B-sized layers x heads grid
    figs = [viz.plot_attention(attn, labels), viz.plot_attention_scores(attn, labels),
            viz.plot_mask_softmax(attn, labels), viz.plot_heads(attn[None].expand(32, T, T), labels),
            viz.plot_overview(many), viz.plot_rope_rotation(torch.ones(4, 8, dtype=torch.complex64), [0, 1, 2, 3, 4],
                                                            torch.arange(4))]
    for fig in figs:
        assert fig.get_size_inches()[0] <= viz.MAX_WIDTH + 1e-6, fig.get_size_inches()
    plt.close("all")


def test_explorer_views_and_errors(run, tok):
    weights, args, _, c = run
    ex = viz.Explorer(weights, args, tok)
    for view in viz.VIEWS:
        assert isinstance(ex.figure(PROMPT, 1, args.n_heads - 1, view), plt.Figure)
        plt.close("all")
    assert ex.trace(PROMPT).n_done == 2                         # only layers 0 and 1 were ever run
    fig = ex.figure(PROMPT, 0, 1, "probs")
    torch.testing.assert_close(_data(_image(fig.axes[0])), c["attn"][0, 1])
    with pytest.raises(ValueError, match="view='nope'"):
        ex.figure(PROMPT, 0, 0, "nope")
    with pytest.raises(ValueError, match="n_heads"):
        ex.figure(PROMPT, 0, args.n_heads, "probs")
    with pytest.raises(ValueError, match="n_layers"):
        ex.figure(PROMPT, args.n_layers, 0, "probs")
    with pytest.raises(ValueError, match="prompt is empty"):
        ex.figure("  ", 0, 0, "probs")
    for view in viz.VIEWS:                                              # with the controls: 1400x900 px
        assert (ex.figure(PROMPT * 4, args.n_layers - 1, 0, view).get_size_inches() <= viz.FIT).all(), view
        plt.close("all")


def test_wrong_label_count_is_refused():
    with pytest.raises(ValueError, match="3 labels for 4 key positions"):
        viz.plot_attention(torch.eye(4), ["a", "b", "c"])
    with pytest.raises(ValueError, match="one label per token"):
        viz.plot_heads(torch.eye(4)[None], ["a"])
