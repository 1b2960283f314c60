"""Per-parameter importance: MAS (exact or batched), l-MAS, the diagonal Fisher, and the Importance state.

Public API::

    from memaware.importance import mas, local_mas, fisher, Importance
    omega = mas(model, batches_of_inputs)          # Mapping[str, Tensor] keyed by parameter name
"""

from memaware.importance.fisher import fisher
from memaware.importance.local import local_mas
from memaware.importance.mas import batches, input_batches, mas
from memaware.importance.rules import RULES, register_rule
from memaware.importance.state import ACCUMULATION_PRESETS, Importance, accumulate

__all__ = [
    "ACCUMULATION_PRESETS",
    "RULES",
    "Importance",
    "accumulate",
    "batches",
    "fisher",
    "input_batches",
    "local_mas",
    "mas",
    "register_rule",
]
