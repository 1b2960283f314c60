"""Loss terms that protect what earlier tasks learned."""

from memaware.penalties.quadratic import QuadraticPenalty

__all__ = ["QuadraticPenalty"]
