"""The HF side: the Trainer callback, the Trainer subclass, model loading, memory accounting."""
