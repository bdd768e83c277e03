"""The demo prompt the notebooks follow: Shakespeare for our model, the famous one for the real 8B."""
from helpers import facts
from helpers.checkpoint import is_llama3_8b

SHAKESPEARE_PROMPT = "JULIET.\nO Romeo, Romeo! wherefore art"  # the default model answers " thou"


def demo_prompt(args, weights=None):
    return facts.PROMPT if is_llama3_8b(args, weights) else SHAKESPEARE_PROMPT
