"""Importance trackers: hooks and signals per adapter. They know nothing of decisions."""

from dynlora.observe.activation import ActivationNorm
from dynlora.observe.gates import GateMagnitude, gate_stats, gate_summary, rank_magnitude
from dynlora.observe.gradient import GradientNorm
from dynlora.observe.scores import RunningScores, Tracker
from dynlora.observe.sensitivity import Sensitivity, follow_ranks

__all__ = ["ActivationNorm", "GateMagnitude", "GradientNorm", "RunningScores", "Sensitivity", "Tracker",
           "follow_ranks", "gate_stats", "gate_summary", "rank_magnitude"]
