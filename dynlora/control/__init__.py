"""The controller (the step owner and the only apply path) and the history's record type."""

from dynlora.control.controller import Controller
from dynlora.control.events import Event

__all__ = ["Controller", "Event"]
