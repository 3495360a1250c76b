"""dynlora: dynamic LoRA fine-tuning (L1RA, module allocation, adaptive) that exports plain PEFT LoRA."""

__version__ = "0.1.0"

from dynlora.callback import DynloraCallback  # noqa: E402
from dynlora.controller import Controller, Resize  # noqa: E402
from dynlora.errors import DynloraError  # noqa: E402
from dynlora.export import export_peft, load_peft  # noqa: E402
from dynlora.inject import AdapterConfig, adapters, inject, merge, remove, unmerge  # noqa: E402
from dynlora.layer import LoraLayer  # noqa: E402
from dynlora.surgery import remap_optimizer_state  # noqa: E402

__all__ = [
    "AdapterConfig", "Controller", "DynloraCallback", "DynloraError", "LoraLayer", "Resize", "__version__",
    "adapters", "export_peft", "inject", "load_peft", "merge", "remap_optimizer_state", "remove", "unmerge",
]
