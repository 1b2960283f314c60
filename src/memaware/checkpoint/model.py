"""The model of a checkpoint, rebuilt without its run: :func:`load_checkpoint_model`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from memaware.checkpoint import store
from memaware.errors import ConfigError
from memaware.files import StrPath
from memaware.models.multihead import MultiHeadClassifier
from memaware.models.registry import model_entry


def load_checkpoint_model(path: StrPath) -> tuple[MultiHeadClassifier, dict[str, Any]]:
    """The model of checkpoint ``path``, with every head it had then, and the checkpoint's manifest.

    ``path`` is a checkpoint folder (``.../step-<NNNNNNNNN>``) or a run's folder of them
    (``OUT/checkpoints/<method>-seed<seed>``: its newest good checkpoint). The backbone is built
    from the manifest's model (name, hidden sizes, input shape; no pretrained weights are read),
    the heads are added, and ``model.safetensors`` is loaded; the model is on the CPU, in eval
    mode, and torch's global random state is left as it was. :class:`ConfigError` for a damaged
    or incompatible checkpoint (see :func:`memaware.checkpoint.store.open_checkpoint`).
    """
    found = store.resolve(Path(path))
    described = found.manifest.get("model")
    try:
        assert isinstance(described, dict)
        entry = model_entry(str(described["name"]))
        with torch.random.fork_rng(devices=[]):
            backbone = entry.backbone(tuple(described["input_shape"]), tuple(described["hidden"]))
            model = MultiHeadClassifier(backbone, backbone.out_features)  # type: ignore[arg-type]
            for head, n_classes in described["heads"]:
                model.add_head(int(head), int(n_classes))
        model.load_state_dict(found.tensors("model.safetensors"))
    except (AssertionError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"{found.path / store.MANIFEST}: cannot rebuild its model "
            f"({type(exc).__name__}: {exc}); the checkpoint is damaged or of another memaware"
        ) from exc
    model.eval()
    return model, found.manifest
