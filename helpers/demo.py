"""The demo prompt the notebooks follow (kept here for `from helpers.demo import demo_prompt`; see facts)."""
from helpers.facts import SHAKESPEARE_PROMPT, demo_prompt  # noqa: F401  (re-exported)
