"""dynlora: dynamic LoRA fine-tuning (L1RA, module allocation, adaptive) that exports plain PEFT LoRA."""

from dynlora.errors import DynloraError

__version__ = "0.1.0"

__all__ = ["DynloraError", "__version__"]
