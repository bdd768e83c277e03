"""Pick the next token from logits: greedy, temperature, top-k, top-p (nucleus). Lives in helpers.generate."""
from helpers.generate import check_sampling, kept_distribution, sample_next  # noqa: F401  (re-exported)
