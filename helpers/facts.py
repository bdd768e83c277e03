"""Published facts about Meta-Llama-3-8B (printed by public walkthroughs run on the real checkpoint).

Oracle cells assert these only when the loaded checkpoint is the real 8B (is_llama3_8b, below); demo_prompt
picks the prompt the notebooks follow.
"""
from helpers.params import ModelArgs
from helpers.state_dict import is_tied

PARAMS = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
          "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}
N_TENSORS = 291
N_PARAMS = 8_030_261_248
TOKENIZER_SHA256 = "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"

TEST_SENTENCE = "This is a test sentence."
TEST_SENTENCE_IDS = [128000, 2028, 374, 264, 1296, 11914, 13, 128001]  # bos + eos

PROMPT = "the answer to the ultimate question of life, the universe, and everything is "
PROMPT_IDS = [128000, 1820, 4320, 311, 279, 17139, 3488, 315, 2324, 11, 279, 15861, 11, 323, 4395, 374, 220]
PROMPT_PIECES = ["<|begin_of_text|>", "the", " answer", " to", " the", " ultimate", " question", " of",
                 " life", ",", " the", " universe", ",", " and", " everything", " is", " "]

ROPE_FREQS_HEAD = [1.0000, 0.81462, 0.66360, 0.54058, 0.44037]   # head_dim 128, theta 500000
ROPE_FREQS_TAIL = [3.0139e-06, 2.4551e-06]
LAYER0_HEAD0_SCORE_RANGE = (-7.5, 2.7)                              # before masking, roughly
NEXT_TOKEN_ID = 2983                                                # argmax at the last position
NEXT_TOKEN = "42"
TOP10 = ["42", "6", "43", "41", "4", "1", "45", "3", "2", "46"]
GREEDY_PROMPT = "Every effort"
GREEDY_25 = (" has been made to trace copyright holders and to obtain their permission for the use of"
             " copyright material. The publisher apologizes for any")

SHAKESPEARE_PROMPT = "JULIET.\nO Romeo, Romeo! wherefore art"  # the default model answers " thou"
SHAPE = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "rope_theta", "use_scaled_rope")


def is_llama3_8b(args, weights=None):
    """True for Meta-Llama-3-8B's shapes (PARAMS; the published-facts oracle cells use this)."""
    want = ModelArgs.from_params(PARAMS)
    ok = all(getattr(args, k) == getattr(want, k) for k in SHAPE)
    ok = ok and not args.extra.get("synthetic")  # our random 8B-shaped checkpoints say so
    return ok and (weights is None or not is_tied(weights))


def demo_prompt(args, weights=None):
    """The demo prompt the notebooks follow: Shakespeare for our model, the famous one for the real 8B."""
    return PROMPT if is_llama3_8b(args, weights) else SHAKESPEARE_PROMPT
