"""llama3-by-hand helpers: the reusable form of what the notebooks teach."""
