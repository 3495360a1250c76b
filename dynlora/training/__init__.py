"""One training pipeline (load -> prepare -> fit -> finish) over task kinds (classification, causal LM)."""
