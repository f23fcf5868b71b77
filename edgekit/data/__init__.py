"""Data shipped with edgekit: eval.txt is the quality evaluation text (a slice of the tiny corpus's held-out split, written by scripts/train_tiny.py)."""
