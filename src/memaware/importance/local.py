"""l-MAS, the paper's local (Hebbian) importance, from forward activations only.

Aljundi et al. (§4.3) apply MAS to each layer l alone: with a the layer's input and F_l its output
y, the per-sample gradient is g_ij(x_k) = ∂‖y^k‖²/∂θ_ij and Ω_ij = (1/N) Σ_k |g_ij(x_k)|. Here y is
the layer's output *as the network computes it*:

* When a ReLU directly follows the layer (every use of its output is a ReLU), y = ReLU(W a + b) is
  the post-ReLU value, y ≥ 0. As ∂y_i/∂(W a + b)_i = 1 wherever y_i > 0, g_ij = 2·y_i·a_j and

      Ω_ij = (1/N) Σ_k |2·y_i^k·a_j^k| = 2·mean_k(y_i^k·a_j^k),

  the average co-activation of the two neurons the weight connects (the paper's ReLU networks).
* For the head and any layer whose output is not directly followed by a ReLU, y = W a + b is the
  raw output and Ω_ij = (1/N) Σ_k |2·y_i^k·a_j^k|, the magnitude of the derivative of the layer's
  own squared output.

Biases have the constant input a ≡ 1. Where the network puts anything between the layer and the
ReLU, the raw output is used: conv → BatchNorm → ReLU gives the conv its raw output, because the
paper's layer is the linear map and the BatchNorm is a separate (affine) layer in between, so the
ReLU never acts on the conv's own output. Other nonlinearities (GELU, tanh, sigmoid, LeakyReLU,
ReLU6, ``clamp``) count as "not a ReLU": only for ReLU does the derivative of the squared
activation, 2·act(z)·act'(z)·a, reduce to the Hebbian product 2·y·a, so for the others the
layer's own (raw) output is the one the definition applies to.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import Node, get_gradient_edge
from torch.utils._pytree import tree_flatten

from memaware.distributed.reduce import Distributed, combined, rank_share
from memaware.errors import ConfigError
from memaware.importance.capture import OwnedParameters, owners, recording
from memaware.importance.mas import Mode, _device, _ModeSwitch, input_batches
from memaware.importance.rules import RULES
from memaware.importance.state import Importance

LOCAL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)

# The node that nn.ReLU, F.relu, torch.relu and Tensor.relu record, in place or not.
RELU_NODE = "ReluBackward0"

Slot = tuple[Node, int]  # one output of an autograd node: (node, output_nr)


def local_mas(
    model: nn.Module,
    data: Iterable[Any],
    *,
    mode: Mode = "eval",
    max_samples: int | None = None,
    distributed: Distributed = "shard",
) -> Importance:
    """l-MAS importance of every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` layer of ``model``.

    For a layer with input x and output y (module docstring for the details):

    * a ReLU follows the layer: Ω_ij = 2·mean_k(y_i^k·x_j^k) on the post-ReLU y;
    * the head and layers without a following ReLU (a BatchNorm, a residual add, another
      nonlinearity in between): Ω_ij = (1/N) Σ_k |2·y_i^k·x_j^k| on the raw y, the magnitude of
      the derivative of the layer's squared output;
    * biases with x ≡ 1: Ω_i = (1/N) Σ_k |2·Σ_positions y_i^k|.

    Positions (conv locations, sequence steps) belong to one sample: its gradient is
    Σ_positions 2·y·x before the magnitude is taken, exactly as for a per-sample gradient. Each
    call of a layer is a layer of its own (its own F_l, judged on its own: a layer used twice may
    be followed by a ReLU once), and the Ω of the calls add up. Every layer's input must hold
    the sample on dimension 0 (a ``ConfigError`` says which layer does not).

    "Followed by a ReLU" is read off the autograd graph: each batch runs forward with autograd
    recording (no backward pass), hooks keep every call's output slot, and a walk from the
    model's output finds the nodes that consume it; the call counts when all of them are ReLUs
    (``relu(y) + y`` uses y raw too, so y stays raw). An in-place ReLU rewrites the output, so y
    is the ReLU of the copy taken as the layer returned. The graph holds what a training forward
    holds, one batch at a time.

    Args:
        model: any ``nn.Module`` returning a tensor, or tuples, lists or dicts of tensors.
        data: iterable of input batches (a tensor, or a tuple/list whose first item is the input).
        mode: ``"eval"`` (paper, dropout off, BatchNorm running statistics) or ``"train"``.
        max_samples: use at most this many inputs.
        distributed: under a process group, as for :func:`memaware.importance.mas` (``shard``:
            this rank's batches of the common stream, sums and counts all-reduced).

    Other parameter layers get no l-MAS importance; no parameter gradient is computed.
    """
    layers = [entry for entry in owners(model) if type(entry.module) in LOCAL_LAYERS]
    device = _device(model)
    sums: dict[str, torch.Tensor] = {}
    n = 0
    with _ModeSwitch(model, mode):
        for x in rank_share(input_batches(data, max_samples), distributed):
            for y, entry, args in _outputs(model, x.to(device), layers):
                if args[0].shape[0] != len(x):  # per-sample sums need the sample on dimension 0
                    raise ConfigError(
                        f"l-MAS: {entry.module} sees {args[0].shape[0]} rows for a batch of "
                        f"{len(x)} samples; every layer's input needs the sample on dimension 0"
                    )
                with torch.no_grad():
                    result = RULES[type(entry.module)](entry.module, args, 2 * y, torch.abs)
                if result is None:
                    raise ConfigError(
                        f"l-MAS does not support {entry.module} (string padding or padding mode)"
                    )
                for local, value in result.items():
                    full = entry.full_names[local]
                    sums[full] = sums[full] + value if full in sums else value
            n += len(x)
    meta = {"method": "l-mas", "mode": mode}
    return combined(Importance(sums, dict.fromkeys(sums, n), n, meta), distributed, device)


def _outputs(
    model: nn.Module, x: torch.Tensor, layers: list[OwnedParameters]
) -> Iterator[tuple[torch.Tensor, OwnedParameters, tuple[Any, ...]]]:
    """(y, layer, the call's inputs) for every call of ``layers`` in ``model(x)``, y as l-MAS uses it."""
    slots: dict[int, list[Slot | None]] = {id(entry): [] for entry in layers}

    def keep_slot(entry: OwnedParameters) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            # No graph (torch.inference_mode): nothing consumes the slot; the output check says so.
            slots[id(entry)].append(_slot(output) if output.grad_fn is not None else None)

        return hook

    for entry in layers:
        entry.calls.clear()
    handles = [entry.module.register_forward_hook(keep_slot(entry)) for entry in layers]
    try:
        with recording(layers), torch.enable_grad():
            output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if layers and not any(t.grad_fn is not None for t in _tensors(output)):
        raise ConfigError(
            "l-MAS needs the model's output in the autograd graph (tensors, or tuples, lists or "
            "dicts of them; not detached, not under torch.inference_mode) to see which layers a "
            f"ReLU follows; got {type(output).__name__} with no tensor in the graph"
        )
    uses = _uses(output)
    del output
    post_relu = [
        [slot is not None and uses.get(slot) == {RELU_NODE} for slot in slots[id(entry)]]
        for entry in layers
    ]
    del uses
    slots.clear()  # the graph (and what it saved) goes here, before the rules run
    for entry, relu_after in zip(layers, post_relu, strict=True):
        for call, relu in zip(entry.calls, relu_after, strict=True):
            assert call.value is not None  # recorded without on_gradient
            yield (torch.relu(call.value) if relu else call.value), entry, call.args
        entry.calls.clear()


def _tensors(output: Any) -> list[torch.Tensor]:
    """The tensors in a model output: a tensor, or any pytree (tuples, lists, dicts) of them."""
    return [leaf for leaf in tree_flatten(output)[0] if isinstance(leaf, torch.Tensor)]


def _uses(output: Any) -> dict[Slot, set[str]]:
    """For every slot of the graph behind ``output``, the names of the nodes that take it as input.

    A slot that is itself part of the model's output is used by ``"output"`` too.
    """
    uses: dict[Slot, set[str]] = {}
    stack: list[Node] = []
    for tensor in _tensors(output):
        if tensor.grad_fn is not None:
            slot = _slot(tensor)
            uses.setdefault(slot, set()).add("output")
            stack.append(slot[0])
    seen = set(stack)
    while stack:
        node = stack.pop()
        for child, index in node.next_functions:
            if child is None:
                continue
            uses.setdefault((child, index), set()).add(node.name())
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return uses


def _slot(tensor: torch.Tensor) -> Slot:
    """The graph slot that produced ``tensor``, as the nodes consuming it name it."""
    edge = get_gradient_edge(tensor)
    return edge.node, edge.output_nr
