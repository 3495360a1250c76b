"""Data: labelled text (built-in tasks, CSV/JSONL) and instruction pairs for causal LMs."""
