"""MAS inside other training loops: PyTorch Lightning and the Hugging Face ``Trainer``.

* :mod:`memaware.integrations.core`: :class:`MASRegulariser`, framework-free: Ω and θ* after
  each task (:meth:`~MASRegulariser.consolidate`), the penalty's gradient at each step
  (:meth:`~MASRegulariser.apply_penalty_grad`); both callbacks are thin shells around it;
* :mod:`memaware.integrations.lightning`: ``MASCallback``, a ``lightning.pytorch.Callback``
  (the ``lightning`` extra: ``pip install memaware[lightning]``);
* :mod:`memaware.integrations.hf`: ``MASTrainerCallback``, a ``transformers.TrainerCallback``
  (the ``hf`` extra: ``pip install memaware[hf]``).

The two callback modules import their framework; this package and the core do not.
"""

from memaware.integrations.core import LABEL_KEYS, MASRegulariser, model_output, output_tensor

__all__ = ["LABEL_KEYS", "MASRegulariser", "model_output", "output_tensor"]
