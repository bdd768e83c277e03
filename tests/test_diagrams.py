"""helpers.diagrams: the shape labels drawn are the shapes of the real tensors, for models of several shapes."""
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import diagrams, facts  # noqa: E402
from helpers.checkpoint import ModelArgs, expected_shapes, load_checkpoint  # noqa: E402
from helpers.model import forward  # noqa: E402
from helpers.random_checkpoint import write_random_checkpoint  # noqa: E402

MODELS = {
    "8B": ModelArgs(**facts.PARAMS),
    "70B": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=128256, multiple_of=4096,
                     ffn_dim_multiplier=1.3),
    "odd": ModelArgs(dim=96, n_layers=3, n_heads=6, n_kv_heads=2, vocab_size=128256, multiple_of=32,
                     ffn_dim_multiplier=1.5),
    "mha": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=1000, multiple_of=16),
    "mqa": ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=1, vocab_size=1000, multiple_of=16),
    "405B": ModelArgs(dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, vocab_size=128256, multiple_of=4096,
                      ffn_dim_multiplier=1.2),
}
WEIGHT = {"tok_embeddings": "tok_embeddings.weight", "output": "output.weight",
          **{w: f"layers.0.attention.{w}.weight" for w in ("wq", "wk", "wv", "wo")},
          **{w: f"layers.0.feed_forward.{w}.weight" for w in ("w1", "w2", "w3")}}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def dims(text):
    """every [..] in a label, as tuples ('T' stays a string)"""
    return [tuple(int(d) if d.isdigit() else d for d in m.split(", ")) for m in re.findall(r"\[([^\]]*)\]", text)]


def drawn_text(fig):
    return {t.get_text() for ax in fig.axes for t in ax.texts}


@pytest.mark.parametrize("name", MODELS)
def test_architecture_labels_are_the_tensor_shapes(name):
    a = MODELS[name]
    fig, labels = diagrams.draw_architecture({"default": load_checkpoint()[1], name: a})
    lab = labels[name]
    assert [s for s, _, _ in diagrams.STEPS] == list(lab)
    shapes = expected_shapes(a)
    for step, key in WEIGHT.items():                       # matrices: the stored shape comes first
        assert dims(lab[step])[0] == shapes[key], step
    T, hd = "T", a.dim // a.n_heads
    assert dims(lab["wq"])[1] == (T, a.n_heads, hd)
    assert dims(lab["wk"])[1] == dims(lab["wv"])[1] == (T, a.n_kv_heads, hd)
    assert dims(lab["attention"])[-1] == (T, a.n_heads * hd)
    for step in ("w1", "w3", "swiglu"):
        assert dims(lab[step])[-1] == (T, shapes["layers.0.feed_forward.w1.weight"][0])
    for step in ("tok_embeddings", "attention_norm", "wo", "add_attention", "ffn_norm", "w2", "add_ffn", "norm"):
        assert dims(lab[step])[-1] == (T, a.dim), step
    assert dims(lab["output"])[-1] == (T, a.vocab_size)
    text = drawn_text(fig)                                 # and these are the strings on the figure
    for step, label in lab.items():
        assert label in text or f"{step}: {label}" in text, step


def test_8b_labels_match_published_shapes():
    lab = diagrams.architecture_labels(MODELS["8B"])
    assert lab["wk"] == "[1024, 4096] → k [T, 8, 128]"
    assert lab["w1"] == "[14336, 4096] → [T, 14336]"
    assert lab["output"] == "[128256, 4096] → logits [T, 128256]"


def test_architecture_shapes_match_a_forward_pass(tmp_path):
    """the labelled [T, vocab] logits and [T, dim]/[T, hidden] activations are what the model computes"""
    d = write_random_checkpoint(tmp_path, seed=1, dim=48, n_layers=2, n_heads=6, n_kv_heads=3,
                                vocab_size=128256, multiple_of=16)
    weights, args = load_checkpoint(d)
    tokens = [128000, 11, 12, 13, 14]
    lab = diagrams.architecture_labels(args)
    got = tuple(forward(weights, args, tokens).shape)
    assert dims(lab["output"])[-1] == ("T", got[1]) and got[0] == len(tokens)
    assert dims(lab["w1"])[-1] == ("T", weights["layers.0.feed_forward.w1.weight"].shape[0])


@pytest.mark.parametrize("name", MODELS)
def test_gqa_groups_follow_repeat_interleave(name):
    a = MODELS[name]
    fig, drawn = diagrams.draw_gqa({name: a, "mqa": MODELS["mqa"]})
    kv = torch.arange(a.n_kv_heads).repeat_interleave(a.n_heads // a.n_kv_heads)   # what attention does
    assert drawn[name] == kv.tolist()
    ax = fig.axes[0]
    assert len(ax.lines) == a.n_heads                      # one line from every query head to its kv head
    texts = [t.get_text() for t in ax.texts][:a.n_heads]      # query head numbers, left to right
    assert texts[0] == "0" and all(t in ("", str(h)) for h, t in enumerate(texts))
    if a.n_heads <= 64:                                        # up to the 70B every head is numbered
        assert texts == [str(h) for h in range(a.n_heads)]


def test_empty_input_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one"):
        diagrams.draw_architecture({})
    with pytest.raises(ValueError, match="at least one"):
        diagrams.draw_gqa({})


@pytest.mark.parametrize("params", [dict(dim=128, n_heads=4), dict(dim=4096, n_heads=32), dict(dim=96, n_heads=6)])
def test_rope_pairs_are_consecutive_channels_with_the_model_frequencies(params):
    from helpers.model import rope_frequencies
    args = ModelArgs(**params, n_layers=1, vocab_size=256, rope_theta=500000.0)
    fig, pairs = diagrams.draw_rope_pairs(args)
    hd = args.head_dim
    x = torch.arange(hd, dtype=torch.float32)                             # channel c holds the value c
    z = torch.view_as_complex(x.reshape(-1, 2))                           # how apply_rope reads the pairs
    assert [(a, b) for a, b, _ in pairs] == [(int(c.real), int(c.imag)) for c in z]
    torch.testing.assert_close(torch.tensor([f for _, _, f in pairs]), rope_frequencies(args))
    assert len(fig.axes[0].lines) == hd                                   # one line from each channel
    assert fig.get_size_inches()[0] <= 11
    plt.close(fig)
