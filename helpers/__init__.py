"""llama3-by-hand helpers: the reusable form of what the notebooks teach."""
import os

if os.environ.get("LLAMA3_PERTURB"):  # a test mode (helpers/perturb.py): nudge every product by a few ulps
    from helpers.perturb import enable
    enable()
