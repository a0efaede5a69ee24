"""Model compression that writes a new Hugging Face folder: pruning (prune.py)."""
