"""Choose task-free MAS's defaults on the validation stream of Split-MNIST (domain scenario).

Each configuration is one pass of one method over the validation stream (every task's test set
replaced by a held-out tenth of its training data, stratified, seed 0; the stream holds the
rest), blurred boundaries; the score is the average accuracy at the true boundaries. One JSON
line per configuration is appended to ``--out`` (a configuration already there is skipped, so
an interrupted sweep resumes) and printed.

Usage: python benchmarks/tune_task_free.py --stage NAME [--out runs/tune-task-free.jsonl]
       [--seeds 0] [--only INDEX,...]

A configuration is ``method``, its ``options`` and changes to the stream (``StreamConfig``
fields). The stages are the grids README's *Streams without task boundaries* reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from memaware.methods import make_method
from memaware.models import build_model
from memaware.training.stream import StreamConfig, StreamSpec, run_stream_method, stream_scenario

TF = "task-free-mas"


def _grid(method: str, field: str, values: list[Any], **options: Any) -> list[dict[str, Any]]:
    return [{"method": method, "options": {**options, field: v}, "stream": {}} for v in values]


STAGES: dict[str, list[dict[str, Any]]] = {
    # the paper's window (5) and the authors' synthetic thresholds (0.2, 0.1): λ first
    "strength": [
        {"method": "online-finetune", "options": {}, "stream": {}},
        {"method": "mas", "options": {"strength": 1000.0}, "stream": {}},
        *_grid(TF, "strength", [10.0, 100.0, 1000.0, 10000.0]),
    ],
}


def _key(config: dict[str, Any], seed: int) -> str:
    return json.dumps({**config, "seed": seed}, sort_keys=True)


def run(config: dict[str, Any], seed: int, scenario: Any) -> dict[str, Any]:
    stream = dataclasses.replace(StreamConfig(evaluations=4, seed=seed), **config["stream"])
    method = make_method(config["method"], seed=seed, **config["options"])
    result = run_stream_method(
        method, scenario, lambda: build_model("mlp", scenario.input_shape, (400, 400)), stream
    )
    return {
        **config,
        "seed": seed,
        "average_accuracy": result.accuracy.average_accuracy(),
        "forgetting": result.accuracy.forgetting(),
        "final": result.accuracy.final().round(4).tolist(),
        "updates": len(result.updates),
        "wall_time_s": round(result.wall_time_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=list(STAGES), required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/tune-task-free.jsonl"))
    parser.add_argument("--seeds", type=lambda t: [int(s) for s in t.split(",")], default=[0])
    parser.add_argument("--only", type=lambda t: [int(s) for s in t.split(",")], default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    done = set()
    if args.out.is_file():
        for line in args.out.read_text().splitlines():
            entry = json.loads(line)
            config = {k: entry[k] for k in ("method", "options", "stream")}
            done.add(_key(config, entry["seed"]))
    scenario = stream_scenario(StreamSpec(validation=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for index, config in enumerate(STAGES[args.stage]):
        if args.only is not None and index not in args.only:
            continue
        for seed in args.seeds:
            if _key(config, seed) in done:
                continue
            start = time.perf_counter()
            entry = run(config, seed, scenario)
            with args.out.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")
            print(
                f"{config['method']:16} {json.dumps(config['options']):60} "
                f"{json.dumps(config['stream']):30} seed {seed}: "
                f"acc {100 * entry['average_accuracy']:.2f} forg {100 * entry['forgetting']:.2f} "
                f"updates {entry['updates']} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
