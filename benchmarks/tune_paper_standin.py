"""Choose the methods' strengths and options of the paper stand-in on validation data (never the test sets).

For each method and value of its strength (``--grid METHOD=v1,v2``) or of another option
(``--grid METHOD.FIELD=v1,v2``; ``--fixed METHOD.FIELD=V`` sets another option in every run of
METHOD), the sequence ``--tasks A,B,...`` of the stand-in is learned with the stand-in's protocol
(``memaware.paper.protocol.standin_protocol``); every task's test set is replaced by
``--validation`` of its training data (stratified, seed 0,
``memaware.data.scenarios.with_validation``), so the score, the average accuracy over the tasks
after the last, never sees a test image. One JSON line per run is appended to ``--out``; the best
value per method is printed. The strengths and options in
``src/memaware/configs/paper/standin.json`` came from::

    python benchmarks/tune_paper_standin.py --tasks mnist0-4,fashion0-4 \
        --grid mas=1,3,10 --grid l-mas=1,10,100 --grid ewc=1,10,100 --grid si=10,100,1000
    SEQUENCE=mnist0-4,fashion0-4,animal0-4,digits0-4,mnist5-9,fashion5-9,animal5-9,digits5-9
    python benchmarks/tune_paper_standin.py --tasks $SEQUENCE \
        --grid lwf.warmup_epochs=0,10 --grid ebll.warmup_epochs=0,10
    python benchmarks/tune_paper_standin.py --tasks $SEQUENCE --fixed ebll.warmup_epochs=0 \
        --grid ebll.code_strength=0.1,0.01
    python benchmarks/tune_paper_standin.py --tasks $SEQUENCE --grid mas=1,3,10 \
        --grid mas.heads=learned,current          # the check that the preset's MAS holds there
    python benchmarks/tune_paper_standin.py --tasks $SEQUENCE --lr 0.001 \
        --grid mas=3 --grid lwf=1 --grid ebll=1     # the same at half the learning rate
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from memaware.configs.standin import load_standin_preset
from memaware.data.benchmarks import make_scenario
from memaware.data.scenarios import with_validation
from memaware.methods import METHODS
from memaware.models import build_model
from memaware.paper.protocol import standin_protocol
from memaware.training.experiment import method_settings
from memaware.training.loop import run_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", required=True, help="the tuning sequence A,B,...")
    parser.add_argument(
        "--grid",
        action="append",
        required=True,
        help="METHOD=v1,v2,... (strengths) or METHOD.FIELD=v1,v2,...",
    )
    parser.add_argument(
        "--fixed", action="append", default=[], help="METHOD.FIELD=V, set in every run of METHOD"
    )
    parser.add_argument("--validation", type=float, default=0.2)
    parser.add_argument("--lr", type=float, help="every task's learning rate (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/tune-paper-standin.jsonl"))
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    protocol = standin_protocol(load_standin_preset(), None, None)
    if args.lr is not None:
        protocol = replace(protocol, train=replace(protocol.train, lr=args.lr, first_task_lr=args.lr))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fixed: dict[str, dict[str, float | int | str]] = {}
    for setting in args.fixed:
        name, option, (value,) = _setting(setting)
        fixed.setdefault(name, {})[option] = value
    for entry in args.grid:
        method, field, values = _setting(entry)
        scores: dict[float | int | str, float] = {}
        for chosen in values:
            settings = {**fixed.get(method, {}), field: chosen}
            spec = replace(protocol, overrides={method: settings}).spec(
                tasks, [method], [args.seed]
            )
            stream = with_validation(
                make_scenario(spec.benchmark, **vars(spec.data_request())), args.validation
            )
            options, _ = method_settings(spec, method)
            start = time.perf_counter()
            result = run_method(
                METHODS[method](options, seed=args.seed),
                stream,
                lambda spec=spec, stream=stream: build_model(spec.model, stream.input_shape),
                replace(spec.train, seed=args.seed),
            )
            summary = result.accuracy.summary()
            scores[chosen] = float(summary["average_accuracy"])
            line = {
                "method": method,
                "lr": spec.train.lr,
                **settings,
                "tasks": tasks,
                "validation_average_accuracy": summary["average_accuracy"],
                "validation_accuracy_matrix": summary["accuracy_matrix"],
                "validation_drop": summary["drop"],
                "seconds": time.perf_counter() - start,
            }
            with args.out.open("a") as handle:
                handle.write(json.dumps(line) + "\n")
            print(json.dumps(line), flush=True)
        best = max(scores, key=lambda v: scores[v])
        print(f"{method}: best {field} {best} ({100 * scores[best]:.2f} %)", flush=True)


def _setting(text: str) -> tuple[str, str, list[float | int | str]]:
    """``METHOD[.FIELD]=v1,v2,...`` as (method, field, values); the field defaults to strength."""
    target, values = text.split("=", 1)
    method, _, field = target.partition(".")
    field = field or "strength"
    return method, field, [_number(field, value) for value in values.split(",")]


def _number(field: str, text: str) -> float | int | str:
    """An option's value: an integer for the ``*epochs`` fields, else a float, else the text
    (a choice such as ``mas.heads=learned``)."""
    if field.endswith("epochs"):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


if __name__ == "__main__":
    main()
