#!/usr/bin/env bash
# The GPU check, in one go (a few minutes on one GPU; each step has a time limit, all under 10
# minutes): the device-parametrised tests, then `memaware bench backbone --json --device cuda` and
# `memaware bench training --json --device cuda`, their figures printed and kept in $OUT_DIR
# (default runs/device-check) as backbone.json and training.json.
#
# Python: $PYTHON when set (any Python with a CUDA build of torch, the test requirements and the
# data and pretrained packages of `make test`; memaware itself is imported from src/), else make
# test's .venv, built with `make` when missing (that needs the network, and its torch is the CPU
# wheel pinned in requirements.txt: on a GPU machine, point PYTHON at a CUDA torch).
#
# Without a GPU (no nvidia-smi device, no CUDA in torch) the check still runs: the accelerator
# tests skip, and say so, and both benchmarks run on the CPU in a small configuration on one
# thread, to show that they run (2–4 minutes; their figures are not GPU figures).
# REQUIRE_GPU=1 makes that case an error.
#
# Exit status: 0 everything passed; 1 a test or a benchmark failed (or ran out of time); 2 no
# usable Python; 3 no usable GPU: one is present but this Python's torch cannot use it, or
# REQUIRE_GPU=1 and there is none.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-runs/device-check}

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
else
    if [ ! -x .venv/bin/python ]; then
        echo "== no .venv here: building make test's environment"
        if ! make .venv/.test-installed .venv/.data .venv/.pretrained .venv/.photos; then
            echo "device_check: could not build .venv (offline?); set PYTHON to a Python with torch" >&2
            exit 2
        fi
    fi
    PY=.venv/bin/python
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import torch, pytest, memaware" 2>/dev/null; then
    echo "device_check: $PY cannot import torch, pytest and memaware; set PYTHON or run make test" >&2
    exit 2
fi
mkdir -p "$OUT_DIR"

echo "== machine"
uptime
"$PY" -c "import torch; print('torch', torch.__version__, '| CUDA build', torch.version.cuda,
      '| devices', torch.cuda.device_count(),
      *(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))"
cuda=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
gpu_present=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
    gpu_present=1
    nvidia-smi -L
fi
if [ "$cuda" = 0 ] && [ "$gpu_present" = 1 ]; then
    echo "device_check: nvidia-smi lists a GPU but $PY's torch cannot use it (a CPU build?);" \
        "set PYTHON to a Python with a CUDA build of torch" >&2
    exit 3
fi
if [ "$cuda" = 0 ] && [ "${REQUIRE_GPU:-0}" = 1 ]; then
    echo "device_check: REQUIRE_GPU=1 and this machine has no CUDA device" >&2
    exit 3
fi

status=0
echo "== device-parametrised tests (tests/test_training_hardware.py, then -k cuda elsewhere)"
timeout 240 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_training_hardware.py || status=1
timeout 180 "$PY" -m pytest -q -rs -p no:cacheprovider -k cuda \
    --ignore=tests/test_training_hardware.py tests
rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then  # 5: no test matched -k cuda
    status=1
fi
if [ "$cuda" = 1 ]; then
    device=cuda
    backbone_options=()
    training_options=()
else
    echo "== no CUDA device: the accelerator tests above skipped; the benchmarks run on the CPU" \
        "(one thread, a small configuration: not GPU figures)"
    device=cpu
    # One intra-op thread: on a shared, loaded CPU a second one mostly waits (10x slower runs).
    export OMP_NUM_THREADS=1
    backbone_options=(--steps 1 --batch-size 2 --image-size 64 --repeats 1)
    training_options=(--epochs 1 --repeats 1)
fi

for bench in backbone training; do
    if [ "$bench" = backbone ]; then
        options=("${backbone_options[@]}")
    else
        options=("${training_options[@]}")
    fi
    echo "== memaware bench $bench --json --device $device ${options[*]}"
    if timeout 240 "$PY" -m memaware.cli.main bench "$bench" --json --device "$device" \
        "${options[@]}" >"$OUT_DIR/$bench.json"; then
        cat "$OUT_DIR/$bench.json"
    else
        echo "device_check: bench $bench failed or ran out of time" >&2
        status=1
    fi
done

if [ $status -eq 0 ]; then
    echo "== device check passed (device $device); figures in $OUT_DIR"
else
    echo "== device check FAILED (device $device); see above" >&2
fi
exit $status
