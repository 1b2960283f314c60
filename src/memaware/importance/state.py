"""The :class:`Importance` state: per-parameter sums and sample counts that merge exactly.

Like a torchmetrics ``Metric`` with ``dist_reduce_fx="sum"``, an estimate keeps
``sums[name] = Σ_k f(g_k)`` and ``counts[name]`` (the divisor), so that the importance over the union
of two data sets is ``(s_a + s_b) / (c_a + c_b)``: batches, processes and deployments merge exactly,
when the estimates are of one kind (computed with the same method and options, see
:meth:`Importance.merge`). The mapping view gives the mean ``Ω[name] = sums[name] / counts[name]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from memaware.errors import ConfigError, DataError

_SUM_PREFIX = "sum."


class Importance(Mapping[str, torch.Tensor]):
    """Importance keyed by ``model.named_parameters()`` names: ``Ω[name] = sums[name] / counts[name]``.

    ``n_samples`` is the number of data points the estimate has seen; ``meta`` records how it was
    computed (method and options), is written into saved files, and is the estimate's kind: only
    estimates with equal ``meta`` merge.
    """

    def __init__(
        self,
        sums: Mapping[str, torch.Tensor],
        counts: Mapping[str, int],
        n_samples: int,
        meta: Mapping[str, str] | None = None,
    ) -> None:
        if set(sums) != set(counts):
            raise ValueError("sums and counts must have the same parameter names")
        self.sums = dict(sums)
        self.counts = dict(counts)
        self.n_samples = n_samples
        self.meta = dict(meta or {})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.sums[name] / max(self.counts[name], 1)

    def __iter__(self) -> Iterator[str]:
        return iter(self.sums)

    def __len__(self) -> int:
        return len(self.sums)

    def __repr__(self) -> str:
        return f"Importance({len(self)} tensors, n_samples={self.n_samples}, meta={self.meta})"

    @property
    def kind(self) -> str:
        """How the estimate was computed, as its ``meta`` values joined by ``/`` (``mas/sample/l2sq/eval``)."""
        return "/".join(map(str, self.meta.values())) or "unspecified"

    def merge(self, other: Importance) -> Importance:
        """The estimate over the union of both data sets: sums and counts add, name by name.

        Only estimates of one kind merge: their ``meta`` (method and every option written there:
        granularity, norm, mode, Fisher labels, l-MAS activation) must be equal, since under other
        options a sum is of another quantity (MAS sums |g|, the Fisher g²) or a count of other
        things (samples for ``granularity="sample"``, batches for ``"batch"``); otherwise
        :class:`ConfigError` names both kinds. An estimate without ``meta`` (built by hand)
        merges with any, and the result takes the other's.
        """
        if self.meta and other.meta and self.meta != other.meta:
            differences = ", ".join(
                f"{key} {self.meta.get(key, '(unset)')} vs {other.meta.get(key, '(unset)')}"
                for key in {**self.meta, **other.meta}
                if self.meta.get(key) != other.meta.get(key)
            )
            raise ConfigError(
                f"cannot merge importance of kind {self.kind} with {other.kind}: {differences}; "
                "sums and counts mean different things under different options, so only "
                "estimates computed with the same ones merge"
            )
        sums = dict(self.sums)
        counts = dict(self.counts)
        for name, value in other.sums.items():
            if name in sums:
                if sums[name].shape != value.shape:
                    raise ValueError(
                        f"cannot merge {name}: shapes {sums[name].shape} and {value.shape}"
                    )
                sums[name] = sums[name] + value
                counts[name] += other.counts[name]
            else:
                sums[name] = value.clone()
                counts[name] = other.counts[name]
        return Importance(sums, counts, self.n_samples + other.n_samples, self.meta or other.meta)

    def save(self, path: str | Path) -> None:
        """Write the sums and counts as safetensors with JSON metadata, atomically."""
        from memaware import __version__
        from memaware.files import atomic_path

        tensors = {
            _SUM_PREFIX + name: t.detach().to("cpu").contiguous() for name, t in self.sums.items()
        }
        metadata = {
            "format": "memaware.importance/1",
            "counts": json.dumps(self.counts),
            "n_samples": str(self.n_samples),
            "meta": json.dumps(self.meta),
            "memaware_version": __version__,
        }
        with atomic_path(Path(path)) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> Importance:
        """Read a file written by :meth:`save`; with ``model``, check that names and shapes fit it."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"importance file {path} does not exist")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata: dict[str, str] = handle.metadata() or {}
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises several types for a corrupt file
            raise DataError(f"{path} is not a readable safetensors importance file: {exc}") from exc
        if metadata.get("format") != "memaware.importance/1":
            raise DataError(f"{path} is not a memaware importance file (metadata format missing)")
        sums = {k[len(_SUM_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_SUM_PREFIX)}
        try:
            counts = {str(k): int(v) for k, v in json.loads(metadata["counts"]).items()}
            importance = cls(
                sums, counts, int(metadata["n_samples"]), json.loads(metadata.get("meta", "{}"))
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise DataError(
                f"{path} has malformed importance metadata ({exc}); write it again with Importance.save"
            ) from exc
        if model is not None:
            importance.check_fits(model, source=str(path))
        return importance

    def check_fits(self, model: nn.Module, source: str = "importance") -> None:
        """Raise :class:`DataError` if a name is not a parameter of ``model`` or a shape differs."""
        params = dict(model.named_parameters())
        for name, value in self.sums.items():
            if name not in params:
                raise DataError(
                    f"{source}: parameter {name!r} is not in the model (it has {len(params)})"
                )
            if params[name].shape != value.shape:
                raise DataError(
                    f"{source}: {name} has shape {tuple(value.shape)}, "
                    f"the model's has {tuple(params[name].shape)}"
                )

    def to_dict(self) -> dict[str, torch.Tensor]:
        """The means as a plain dict (what penalties consume)."""
        return {name: self[name] for name in self}


def accumulate(
    total: Mapping[str, torch.Tensor] | None,
    new: Mapping[str, torch.Tensor],
    *,
    rule: str = "sum",
    alpha: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Combine the importance of past tasks with a new task's.

    * ``"sum"`` (the MAS authors' code): Ω ← Ω_prev + Ω_new;
    * ``"blend"`` (FACIL, Avalanche): Ω ← α·Ω_prev + (1 − α)·Ω_new.

    A parameter new to ``new`` (e.g. a head added since) takes ``Ω_new``; one only in ``total`` keeps its value.
    """
    if rule not in ("sum", "blend"):
        raise ValueError(f"unknown accumulation rule {rule!r}; use 'sum' or 'blend'")
    out = {name: value.clone() for name, value in (total or {}).items()}
    for name, value in new.items():
        if name not in out:
            out[name] = value.clone()
        elif rule == "sum":
            out[name] = out[name] + value
        else:
            out[name] = alpha * out[name] + (1.0 - alpha) * value
    return out


ACCUMULATION_PRESETS: dict[str, dict[str, Any]] = {
    "mas": {"rule": "sum"},
    "facil": {"rule": "blend", "alpha": 0.5},
    "avalanche": {"rule": "blend", "alpha": 0.5},
}
