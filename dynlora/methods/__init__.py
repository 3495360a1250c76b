"""Methods: one module per method, each built from observe + decide, and the registry they join.

Importing this package registers the built-in methods. A new method is a module that builds its
``MethodSpec`` and calls ``registry.register``; nothing outside this package names a method.
"""

from dynlora.methods import (  # noqa: F401
    adaptive, l1ra, l1ra_alloc, lora, module_alloc, peft_adalora, peft_eva, peft_lora)
from dynlora.methods.base import (AdapterNeeds, Method, MethodBase, MethodSpec, Prepared, TrainData,
                                  View)
from dynlora.methods.registry import get, names, register, unregister
from dynlora.methods.settings import AdapterSettings

__all__ = ["AdapterNeeds", "AdapterSettings", "Method", "MethodBase", "MethodSpec", "Prepared", "TrainData", "View",
           "get", "names", "register", "unregister"]
