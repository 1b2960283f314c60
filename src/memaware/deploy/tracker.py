"""Exact MAS importance from the inputs a deployed model serves: :class:`ImportanceTracker`.

The MAS abstract computes the importance "based on the data that the network is actively applied
to, in an unsupervised manner" and accumulates it "whenever a new sample is fed to the network".
A tracker does that for a model that serves predictions::

    tracker = ImportanceTracker(model, fraction=0.1, path="omega.safetensors", save_every=1000)
    with tracker:                       # attached for the block
        with torch.inference_mode():
            predictions = model(x)      # exactly what the model returns without the tracker
    omega = tracker.importance()        # an Importance: sums and counts, Ω = sums / counts

It counts Ω_ij = (1/N) Σ_k |∂‖F(x_k)‖²/∂θ_ij| over a seeded sample of the served inputs, with
the exact per-sample engine (:class:`~memaware.importance.exact.ExactEngine`): over the same
inputs it is :func:`memaware.importance.mas` (same ``meta``, so the two merge, and trackers on
several replicas merge into the importance over all their traffic).

How it stays out of the served call's way:

* **The served call is not changed.** :meth:`ImportanceTracker.attach` registers a forward
  pre-hook and a forward hook on the model's root module; neither returns anything, so the
  output is the model's own object, bit for bit. Each served sample is counted with
  probability ``fraction``, independently, drawn from the tracker's own ``random.Random``
  (seeded by ``seed``) as geometric gaps between counted samples: one random number per
  counted sample, nothing at all for a call none of whose samples is counted; the model's
  and torch's random streams are not touched.
* **No autograd work on the served forward.** The pre-hook copies the counted rows of the
  (detached) input out, in the caller's mode; the forward hook, once the forward has returned,
  hands them to a worker thread. The worker runs the engine in its own thread (grad and
  inference modes are per thread), with gradients on; it first copies the rows of an
  ``inference_mode`` server, which are inference tensors that autograd cannot save, into
  ordinary ones.
* **A private copy of the model, at the weights that served.** The engine registers hooks on
  the model it measures; it measures a deep copy (in eval mode, as MAS does), so its hooks
  never run on a forward another thread serves through. The copy is taken in the serving
  thread, before the forward of a call with counted samples, whenever the model changed since
  the last one: a parameter or buffer modified in place (its version counter), re-pointed
  (``.data =``, its storage) or (un)frozen, or a parameter, buffer or module registered
  anywhere (PyTorch's global registration hooks; the model's names and tensors are then
  compared). So every counted input is measured at the weights that answered it, even when
  the model is updated between calls (online fine-tuning, ``load_state_dict``, a new head),
  and a call costs a few attribute reads, not a walk of the model. A model served in train
  mode whose BatchNorm statistics move at every call is copied at every counted call.
* **Batched in the background.** The worker gathers counted inputs into batches of up to
  ``batch_size`` (waiting about ``max_delay`` seconds, at most twice that, for a batch to
  fill: an idle worker looks at its queue every ``max_delay`` seconds, and is woken early
  only by a full batch, a flush or a detach), per copy of the weights and per value of the
  call's other arguments (the head id of a multi-head model), so that a fraction of 0.01 does
  not pay the engine's per-call cost for every sample. On Linux the worker runs ``niceness``
  steps below the serving threads' priority, so that it counts on spare CPU first. At most
  ``max_pending`` samples wait: when the worker falls behind, the serving call waits for room
  (``when_full="wait"``: every drawn sample is counted) or the sample is dropped
  (``"drop"``: serving never waits; :attr:`ImportanceTracker.dropped` counts them).
* **Several serving threads.** The draw, the queue and the sums each sit behind a lock; the
  served forwards themselves run concurrently as they would without the tracker.
* **Failures never reach the server.** An error while counting (an input the copy cannot take,
  a full disk while saving) stops the tracker; the served calls go on untouched, and the next
  :meth:`~ImportanceTracker.flush`, :meth:`~ImportanceTracker.importance`,
  :meth:`~ImportanceTracker.save` or :meth:`~ImportanceTracker.detach` raises
  :class:`TrackerError` with it.

Persistence: with ``path``, the importance is written there (``Importance.save``: safetensors,
through :func:`memaware.files.atomic_path`, so a crash or kill mid-write leaves the previous
file whole) every ``save_every`` counted samples and/or every ``save_interval`` seconds, and on
:meth:`~ImportanceTracker.detach`; ``resume=True`` starts from the file when it exists.

What is taken as the input: the first positional argument of the call, samples on dimension 0;
another tensor argument whose first dimension has the batch's size is taken as per-sample and
sampled alike; every other argument is passed to the copy as it was. F is what the call
returns, or ``outputs(copy, x)`` when ``outputs`` is given. Only calls of the model itself go
through the hooks (``model(x)``, not ``model.forward(x)`` or ``model.backbone(x)``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from memaware.errors import ConfigError, MemawareError
from memaware.files import StrPath
from memaware.importance.exact import ExactEngine
from memaware.importance.mas import Mode, Norm, OutputFn, output_objectives
from memaware.importance.state import Importance

WhenFull = Literal["wait", "drop"]


class TrackerError(MemawareError):
    """Counting failed in the tracker's worker (the served calls were not affected)."""


@dataclass
class _Snapshot:
    """A private copy of the model at one state of its weights, and the engine measuring it."""

    model: nn.Module
    engine: ExactEngine | None = None  # built by the worker, on first use


@dataclass
class _Item:
    """Counted rows of one served call, waiting for the worker."""

    snapshot: _Snapshot
    key: Hashable | None  # calls with equal keys share a batch; None: counted alone
    x: torch.Tensor
    args: tuple[Any, ...]  # the call's other positional arguments
    kwargs: dict[str, Any]
    arrived: float = field(default_factory=time.monotonic)

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


#: registrations of a parameter, buffer or submodule on any module so far (see _watch_structure)
_registrations = 0
_watching = threading.Lock()
_watched = False


def _count_registration(*args: Any) -> None:
    global _registrations
    _registrations += 1


def _watch_structure() -> None:
    """Count every registration of a parameter, buffer or module in the process, once.

    Replacing a parameter or adding a head goes through a registration; with its count, a
    served call tells that the model's structure may have changed without walking the model.
    """
    global _watched
    with _watching:
        if not _watched:
            mod = torch.nn.modules.module
            mod.register_module_parameter_registration_hook(_count_registration)
            mod.register_module_buffer_registration_hook(_count_registration)
            mod.register_module_module_registration_hook(_count_registration)
            _watched = True


def _structure(model: nn.Module) -> tuple[tuple[str, int], ...]:
    """The names and identities of the model's parameters and buffers."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return tuple((name, id(t)) for name, t in named)


def _weights(model: nn.Module) -> list[tuple[torch.Tensor, int, int, bool]]:
    """Every parameter and buffer with its in-place version, storage and ``requires_grad``."""
    tensors = [*model.parameters(), *model.buffers()]
    return [(t, t._version, t.data_ptr(), t.requires_grad) for t in tensors]


def _changed(weights: list[tuple[torch.Tensor, int, int, bool]]) -> bool:
    """Whether a tensor of :func:`_weights` was modified in place, re-pointed or (un)frozen."""
    return any(
        t._version != version or t.data_ptr() != pointer or t.requires_grad != grad
        for t, version, pointer, grad in weights
    )


def _key(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Hashable | None:
    """What calls must share to be counted in one batch: their other arguments, when hashable."""
    values = (*args, *kwargs.values())
    if any(isinstance(v, torch.Tensor) for v in values):
        return None
    key = (args, tuple(sorted(kwargs.items())))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _ordinary(value: Any) -> Any:
    """An inference tensor as an ordinary one (a copy, made outside inference mode), so that
    autograd may save it; anything else as it is."""
    if isinstance(value, torch.Tensor) and value.is_inference():
        return value.clone()
    return value


def _rows(value: Any, index: torch.Tensor | None, n: int) -> Any:
    """A detached copy of ``value``'s rows ``index`` if it is a per-sample tensor, else ``value``."""
    if not isinstance(value, torch.Tensor):
        return value
    value = value.detach()
    if value.dim() == 0 or value.shape[0] != n:
        return value.clone()
    if index is None:
        return value.clone()
    return value.index_select(0, index.to(value.device))


class ImportanceTracker:
    """Exact per-sample MAS importance over a seeded ``fraction`` of the inputs a model serves.

    Args:
        model: the served model (any ``nn.Module``); its parameters with ``requires_grad``
            are measured (those the next task trains), as :func:`memaware.importance.mas` does.
        fraction: each served sample is counted with this probability, in (0, 1].
        seed: seeds the tracker's own generator of those draws.
        outputs: ``F(model, x)``; default: what the served call returns for ``x``.
        norm, mode, sample_dims: as :func:`memaware.importance.mas` (``"l2sq"``, ``"eval"``).
        batch_size: counted samples per pass of the engine, >= 1.
        max_delay: seconds a counted sample may wait for its batch to fill, > 0.
        max_pending: counted samples that may wait for the worker, >= 1.
        when_full: ``"wait"`` (the serving call waits for room) or ``"drop"`` (the sample is
            dropped and counted in :attr:`dropped`).
        path: where the importance is saved (``Importance.save``, atomically).
        save_every: save after every this many counted samples (>= 1; needs ``path``).
        save_interval: save when this many seconds have passed since the last save and samples
            were counted since (> 0; needs ``path``).
        resume: start from the importance in ``path`` when the file exists (its kind and
            parameter names must fit).
        niceness: on Linux, the worker thread's nice value is raised by this much (0: left as
            it is), so that it counts on CPU time the serving threads leave.
        worker_threads: intra-op CPU threads of the worker's passes, >= 1. The count is the
            worker thread's own (OpenMP's is per thread): the serving threads keep theirs. One,
            by default, so that the worker's team of threads does not crowd the cores the
            serving calls' teams run on.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        fraction: float = 1.0,
        seed: int = 0,
        outputs: OutputFn | None = None,
        norm: Norm = "l2sq",
        mode: Mode = "eval",
        sample_dims: Mapping[str, int] | None = None,
        batch_size: int = 256,
        max_delay: float = 1.0,
        max_pending: int = 4096,
        when_full: WhenFull = "wait",
        path: StrPath | None = None,
        save_every: int | None = None,
        save_interval: float | None = None,
        resume: bool = False,
        niceness: int = 10,
        worker_threads: int = 1,
    ) -> None:
        _check(model, fraction, seed, batch_size, max_delay, max_pending, when_full, mode)
        if isinstance(niceness, bool) or not isinstance(niceness, int) or niceness < 0:
            raise ConfigError(f"niceness must be an integer >= 0, got {niceness!r}")
        if isinstance(worker_threads, bool) or not isinstance(worker_threads, int) or (
            worker_threads < 1
        ):
            raise ConfigError(f"worker_threads must be an integer >= 1, got {worker_threads!r}")
        output_objectives(norm, outputs or (lambda m, x: x))  # an unknown norm fails now
        if path is None and (save_every is not None or save_interval is not None or resume):
            raise ConfigError("save_every, save_interval and resume need a path to save to")
        if save_every is not None and (isinstance(save_every, bool) or save_every < 1):
            raise ConfigError(f"save_every must be an integer >= 1, got {save_every!r}")
        if save_interval is not None and not (math.isfinite(save_interval) and save_interval > 0):
            raise ConfigError(f"save_interval must be a number of seconds > 0, got {save_interval}")
        self.model = model
        self.fraction = float(fraction)
        self.seed = seed
        self.outputs = outputs
        self.norm: Norm = norm
        self.mode: Mode = mode
        self.sample_dims = dict(sample_dims or {})
        self.batch_size = batch_size
        self.max_delay = float(max_delay)
        self.max_pending = max_pending
        self.when_full: WhenFull = when_full
        self.path = Path(path) if path is not None else None
        self.save_every = save_every
        self.save_interval = save_interval
        self.niceness = niceness
        self.worker_threads = worker_threads
        self.meta = {"method": "mas", "granularity": "sample", "norm": norm, "mode": mode}

        self._random = random.Random(seed)
        self._gap = self._next_gap() if self.fraction < 1.0 else 0
        self._draw_lock = threading.Lock()  # the generator and the snapshot
        self._cv = threading.Condition()  # the queue, the counters, the error
        self._state_lock = threading.Lock()  # the sums
        self._local = threading.local()  # rows drawn by the pre-hook, for the forward hook
        self._pending: deque[_Item] = deque()
        self._pending_samples = 0
        self._submitted = 0  # samples handed to the worker
        self._processed = 0  # samples the worker has finished with (counted or failed)
        self._flushing = 0  # callers waiting in flush()
        self._stopping = False
        self._error: BaseException | None = None
        self._worker: threading.Thread | None = None
        self._handles: list[RemovableHandle] = []
        self._snapshot: _Snapshot | None = None
        # the served model's tensors when the snapshot was taken, and the registrations then
        self._weights: list[tuple[torch.Tensor, int, int, bool]] = []
        self._registrations = -1
        self._structure: tuple[tuple[str, int], ...] = ()

        self._sums: dict[str, torch.Tensor] = {}
        self._seen: dict[str, int] = {}  # samples counted while the parameter was in the model
        self._n = 0
        self._saved_at_n = 0
        self._saved_at = time.monotonic()
        #: served samples that went through the hooks, drawn samples, and drawn samples dropped
        self.served = 0
        self.drawn = 0
        self.dropped = 0
        #: seconds the worker spent counting (the engine's passes), and its passes
        self.busy_s = 0.0
        self.passes = 0
        if resume and self.path is not None and self.path.is_file():
            self._resume(Importance.load(self.path, model))

    # -- public API ---------------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        """Whether the hooks are on the model."""
        return bool(self._handles)

    @property
    def counted(self) -> int:
        """Samples in the importance so far (including those resumed from the file)."""
        with self._state_lock:
            return self._n

    @property
    def pending(self) -> int:
        """Samples drawn and handed to the worker but not counted yet."""
        with self._cv:
            return self._submitted - self._processed

    def attach(self) -> ImportanceTracker:
        """Put the hooks on the model and start the worker; returns the tracker.

        Raises :class:`ConfigError` if already attached, if the model has no trainable
        parameter, or if it cannot be copied.
        """
        if self.attached:
            raise ConfigError("the tracker is already attached")
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ConfigError(
                "the model has no parameter with requires_grad: the tracker measures those the "
                "next task trains, and there are none"
            )
        with self._cv:
            self._stopping = False
        _watch_structure()
        tracker = self

        # Plain closures, not bound methods: copy.deepcopy of the model copies its hook dicts,
        # and copies a function as itself but a bound method with its object (the tracker).
        def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            tracker._before(module, args, kwargs)

        def after(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> None:
            tracker._after(module, output)

        self._handles = [
            self.model.register_forward_pre_hook(before, with_kwargs=True),
            self.model.register_forward_hook(after, with_kwargs=True, always_call=True),
        ]
        try:
            with self._draw_lock:
                self._refresh()  # a model that cannot be copied fails here, not while serving
        except Exception:
            self._remove_hooks()
            raise
        self._worker = threading.Thread(target=self._work, name="memaware-tracker", daemon=True)
        self._worker.start()
        return self

    def detach(self) -> None:
        """Remove the hooks, count what is pending, stop the worker and save (with ``path``).

        Raises :class:`TrackerError` if counting failed (the hooks are removed all the same).
        """
        self._remove_hooks()
        worker, self._worker = self._worker, None
        if worker is not None:
            with self._cv:
                self._stopping = True
                self._cv.notify_all()
            worker.join()
        self._raise_error()
        if self.path is not None:
            self.save()

    def __enter__(self) -> ImportanceTracker:
        return self.attach()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.detach()
            return
        with contextlib.suppress(TrackerError):  # do not hide the block's own exception
            self.detach()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every sample drawn so far is counted (:class:`TrackerError` if counting
        failed, ``TimeoutError`` after ``timeout`` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            target = self._submitted
            if self._worker is None and self._processed < target and self._error is None:
                raise TrackerError("samples are waiting but the tracker is detached")
            self._flushing += 1
            self._cv.notify_all()
            try:
                while self._processed < target and self._error is None:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(
                            f"{target - self._processed} samples not counted after {timeout} s"
                        )
                    self._cv.wait(left)
            finally:
                self._flushing -= 1
        self._raise_error()

    def importance(self) -> Importance:
        """The importance of every sample drawn so far (flushed first), as a new ``Importance``.

        Its ``meta`` is :func:`memaware.importance.mas`'s (``mas/sample/<norm>/<mode>``), so it
        merges with the importance of training data and with other trackers'.
        """
        if self._worker is not None:
            self.flush()
        self._raise_error()
        return self._current()

    def save(self, path: StrPath | None = None) -> Path:
        """Write the importance counted so far to ``path`` (default: the tracker's), atomically.

        Samples still waiting are not flushed first (see :meth:`flush`).
        """
        self._raise_error()
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ConfigError("the tracker has no path: give save() one")
        with self._state_lock:
            n = self._n
        self._current().save(target)
        if target == self.path:
            self._saved_at_n, self._saved_at = n, time.monotonic()
        return target

    # -- the serving side ---------------------------------------------------------------------

    def _stack(self) -> list[tuple[_Snapshot, Hashable | None, torch.Tensor, Any, Any] | None]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Draw the counted rows of the call's input and copy them out (before the forward)."""
        stack = self._stack()
        if module is not self.model or self._error is not None:
            stack.append(None)  # a copy's forward, or a stopped tracker: nothing to count
            return
        try:
            stack.append(self._draw(args, kwargs))
        except Exception as exc:  # never break the served call
            stack.append(None)
            self._fail(exc)

    def _draw(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[_Snapshot, Hashable | None, torch.Tensor, Any, Any] | None:
        if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() == 0:
            raise ConfigError(
                "the tracker takes the first positional argument of the call as the batch of "
                f"inputs (samples on dimension 0), got {type(args[0]).__name__ if args else 'none'}"
            )
        x = args[0]
        n = int(x.shape[0])
        if n == 0:
            return None  # an empty request: no sample to count
        with self._draw_lock:
            self.served += n
            if self.fraction >= 1.0:
                index = None
                drawn = n
            else:
                chosen = self._choose(n)
                drawn = len(chosen)
                if drawn == 0:
                    return None  # the common case at small fractions: nothing else to do
                index = torch.tensor(chosen)
            self.drawn += drawn
            if self._registrations != _registrations:  # something, somewhere, was registered
                if _structure(self.model) != self._structure:
                    self._refresh()
                self._registrations = _registrations
            if _changed(self._weights):
                self._refresh()
            snapshot = self._snapshot
        assert snapshot is not None
        # Copies (the caller may reuse its buffers), of detached tensors (no autograd node); in
        # the caller's mode: an inference_mode server's copies are inference tensors, which the
        # worker turns into ordinary ones, outside inference mode, before autograd sees them.
        rows = _rows(x, index, n)
        rest = tuple(_rows(a, index, n) for a in args[1:])
        named = {k: _rows(v, index, n) for k, v in kwargs.items()}
        return snapshot, _key(rest, named), rows, rest, named

    def _choose(self, n: int) -> list[int]:
        """The positions among the next ``n`` served samples that are counted.

        Each sample is counted with probability ``fraction``, independently: the gaps between
        counted samples are geometric, so the draw costs one random number per counted sample
        (and none for a call of which nothing is counted).
        """
        chosen = []
        position = self._gap
        while position < n:
            chosen.append(position)
            position += 1 + self._next_gap()
        self._gap = position - n
        return chosen

    def _next_gap(self) -> int:
        """Samples skipped before the next counted one: P(k) = (1 − f)^k f, k = 0, 1, ..."""
        return int(math.log1p(-self._random.random()) / math.log1p(-self.fraction))

    def _refresh(self) -> None:
        """Copy the model at its weights now (the caller holds the draw lock)."""
        with torch.inference_mode(False), torch.no_grad():
            private = copy.deepcopy(self.model)
        for handle in self._handles:
            for hooks in (
                private._forward_pre_hooks,
                private._forward_pre_hooks_with_kwargs,
                private._forward_hooks,
                private._forward_hooks_with_kwargs,
                private._forward_hooks_always_called,
            ):
                hooks.pop(handle.id, None)
        for param in private.parameters():
            param.grad = None
        private.train(self.mode == "train")
        self._snapshot = _Snapshot(private)
        self._registrations = _registrations
        self._weights = _weights(self.model)
        self._structure = _structure(self.model)

    def _after(self, module: nn.Module, output: Any) -> None:
        """Hand the rows drawn before this forward to the worker (after it returned)."""
        stack = self._stack()
        drawn = stack.pop() if stack else None
        if drawn is None or output is None:  # nothing drawn, or the forward raised
            return
        snapshot, key, rows, rest, named = drawn
        item = _Item(snapshot, key, rows, rest, named)
        with self._cv:
            while (
                self.when_full == "wait"
                and self._pending_samples
                and self._pending_samples + item.n > self.max_pending
                and self._error is None
                and not self._stopping
            ):
                self._cv.wait()
            if self._error is not None or self._stopping or self._worker is None:
                return
            if self._pending_samples and self._pending_samples + item.n > self.max_pending:
                self.dropped += item.n
                return
            self._pending.append(item)
            self._pending_samples += item.n
            self._submitted += item.n
            # woken for a full batch only: an idle worker looks every max_delay seconds itself,
            # so that a served call does not hand the interpreter lock over for every sample
            if self._pending_samples >= self.batch_size:
                self._cv.notify_all()

    # -- the worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        torch.set_num_threads(self.worker_threads)  # this thread's team only
        if self.niceness and hasattr(os, "setpriority") and sys.platform.startswith("linux"):
            # Linux schedules threads one by one: lower this one's priority (and that of the
            # intra-op threads it starts, which inherit it), so it counts on spare CPU first
            with contextlib.suppress(OSError):
                tid = threading.get_native_id()
                os.setpriority(
                    os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self.niceness
                )
        while True:
            with self._cv:
                items = self._next_batch()
                if items is None:
                    return
            n = sum(item.n for item in items)
            try:
                if items:
                    self._count(items)
                self._periodic_save()
            except BaseException as exc:
                self._fail(exc)
                return
            finally:
                with self._cv:
                    self._processed += n
                    self._cv.notify_all()

    def _next_batch(self) -> list[_Item] | None:
        """Wait for a batch (the caller holds the condition); ``None`` once stopped and drained."""
        while True:
            if self._error is not None:
                return None
            now = time.monotonic()
            oldest = self._pending[0].arrived if self._pending else now
            due = self._pending_samples >= self.batch_size or (
                self._pending
                and (self._flushing or self._stopping or now - oldest >= self.max_delay)
            )
            if due:
                return self._take()
            if self._stopping:
                return None
            if self._save_due(now):
                return []
            waits = [self.max_delay - (now - oldest)] if self._pending else [self.max_delay]
            if self.save_interval is not None and self._n > self._saved_at_n:
                waits.append(self.save_interval - (now - self._saved_at))
            self._cv.wait(max(min(waits), 1e-3))

    def _take(self) -> list[_Item]:
        """Up to ``batch_size`` samples of calls sharing the first waiting call's weights and key."""
        first = self._pending.popleft()
        taken, room = [first], self.batch_size - first.n
        if first.key is not None:
            kept: deque[_Item] = deque()
            while self._pending and room > 0:
                item = self._pending.popleft()
                if item.snapshot is not first.snapshot or item.key != first.key:
                    kept.append(item)
                    continue
                if item.n > room:  # split: the rest waits at the front
                    head = _Item(item.snapshot, item.key, item.x[:room], item.args, item.kwargs)
                    item.x = item.x[room:]
                    kept.append(item)
                    item = head
                taken.append(item)
                room -= item.n
            self._pending.extendleft(reversed(kept))
        self._pending_samples -= sum(item.n for item in taken)
        return taken

    def _count(self, items: list[_Item]) -> None:
        """Add Σ_k |∂‖F(x_k)‖²/∂θ| of the items' samples to the sums (in the worker thread)."""
        first = items[0]
        snapshot = first.snapshot
        private = snapshot.model
        if snapshot.engine is None:
            snapshot.engine = ExactEngine(private, torch.abs, 1, self.sample_dims)
        engine = snapshot.engine
        x = _ordinary(first.x if len(items) == 1 else torch.cat([item.x for item in items]))
        args = tuple(_ordinary(a) for a in first.args)
        kwargs = {k: _ordinary(v) for k, v in first.kwargs.items()}
        served: OutputFn = self.outputs or (lambda m, inputs: m(inputs, *args, **kwargs))
        start = time.perf_counter()
        with torch.enable_grad():
            engine.add_batch(x, output_objectives(self.norm, served))
        sums, engine.sums = engine.sums, {}
        with self._state_lock:
            n = int(x.shape[0])
            for name in engine.params:
                self._seen[name] = self._seen.get(name, 0) + n
            for name, value in sums.items():
                current = self._sums.get(name)
                self._sums[name] = value if current is None else current + value
            self._n += n
            self.busy_s += time.perf_counter() - start
            self.passes += 1

    def _save_due(self, now: float) -> bool:
        if self.path is None or self._n == self._saved_at_n:
            return False
        if self.save_every is not None and self._n - self._saved_at_n >= self.save_every:
            return True
        return self.save_interval is not None and now - self._saved_at >= self.save_interval

    def _periodic_save(self) -> None:
        if self._save_due(time.monotonic()):
            self.save()

    # -- state --------------------------------------------------------------------------------

    def _current(self) -> Importance:
        # outside inference mode, so that a caller inside it gets tensors autograd can use
        with torch.inference_mode(False), self._state_lock:
            sums = {name: value.clone() for name, value in self._sums.items()}
            counts = {name: self._seen[name] for name in sums}
            return Importance(sums, counts, self._n, self.meta)

    def _resume(self, saved: Importance) -> None:
        if saved.meta != self.meta:
            raise ConfigError(
                f"{self.path} holds importance of kind {saved.kind}, the tracker counts "
                f"{'/'.join(self.meta.values())}: it cannot continue from it"
            )
        device = next(self.model.parameters()).device
        self._sums = {name: value.to(device) for name, value in saved.sums.items()}
        # a parameter without a sum in the file was in the model but not reached: it has seen
        # every sample of the file (its sum is zero so far)
        trainable = [name for name, p in self.model.named_parameters() if p.requires_grad]
        self._seen = {name: saved.counts.get(name, saved.n_samples) for name in trainable}
        self._seen.update(saved.counts)
        self._n = self._saved_at_n = saved.n_samples

    def _fail(self, exc: BaseException) -> None:
        with self._cv:
            if self._error is None:
                self._error = exc
            dropped = self._pending_samples
            self._pending.clear()
            self._pending_samples = 0
            self._processed += dropped
            self._cv.notify_all()

    def _raise_error(self) -> None:
        error = self._error
        if error is not None:
            raise TrackerError(
                f"the importance tracker stopped: {type(error).__name__}: {error}"
            ) from error

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _check(
    model: nn.Module,
    fraction: float,
    seed: int,
    batch_size: int,
    max_delay: float,
    max_pending: int,
    when_full: str,
    mode: str,
) -> None:
    """Reject bad settings with a :class:`ConfigError` naming them."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"the tracker needs an nn.Module, got {type(model).__name__}")
    if isinstance(fraction, bool) or not (isinstance(fraction, int | float) and 0 < fraction <= 1):
        raise ConfigError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    for name, value in (("batch_size", batch_size), ("max_pending", max_pending)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    if not (isinstance(max_delay, int | float) and math.isfinite(max_delay) and max_delay > 0):
        raise ConfigError(f"max_delay must be a number of seconds > 0, got {max_delay!r}")
    if when_full not in ("wait", "drop"):
        raise ConfigError(f"when_full must be 'wait' or 'drop', got {when_full!r}")
    if mode not in ("eval", "train"):
        raise ConfigError(f"unknown mode {mode!r}; use 'eval' (the paper) or 'train'")


__all__ = ["ImportanceTracker", "TrackerError"]
