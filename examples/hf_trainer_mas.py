"""MAS inside the Hugging Face Trainer: a tiny BERT, built from a config, learns two token tasks.

Task 1: does token 5 occur in a sequence of tokens 3..10? Task 2: does token 15 occur in a
sequence of tokens 11..18? One ``Trainer`` per task, the same ``MASTrainerCallback`` in both;
after each task Ω is computed on unlabelled inputs chosen here (the task's own
``input_ids``/``attention_mask``, no labels), and while the next task trains the penalty's
gradient 2λΩ(θ − θ*) joins ``.grad`` before every optimizer step.

Run: python examples/hf_trainer_mas.py   (a few seconds on a laptop CPU; needs memaware[hf])
"""

from __future__ import annotations

import tempfile

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from memaware.integrations.hf import MASTrainerCallback


class ContainsToken(Dataset[dict[str, torch.Tensor]]):
    """Sequences of 8 tokens from ``low..low+7``; the label is whether ``key`` occurs (half do)."""

    def __init__(self, key: int, low: int, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(low, low + 8, (n, 8), generator=g)
        ids[ids == key] = low + 7
        self.labels = torch.arange(n) % 2
        where = torch.randint(0, 8, (n,), generator=g)
        ids[self.labels == 1, where[self.labels == 1]] = key
        self.input_ids, self.attention_mask = ids, torch.ones_like(ids)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "labels": self.labels[i],
        }

    def unlabelled(self) -> list[dict[str, torch.Tensor]]:
        """The inputs alone, as one batch: what MAS's importance is computed on.

        ``position_ids`` are BERT's own default (0..7), given per sequence: left out, BERT adds
        one row of position embeddings to the whole batch, which the exact engine cannot split
        by sample and computes on its slower graph path (the same Ω, about 100x the time here).
        """
        positions = torch.arange(self.input_ids.shape[1]).expand_as(self.input_ids)
        return [
            {
                "input_ids": self.input_ids,
                "attention_mask": self.attention_mask,
                "position_ids": positions,
            }
        ]

    def accuracy(self, model: BertForSequenceClassification) -> float:
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=self.input_ids, attention_mask=self.attention_mask).logits
        return float((logits.argmax(1) == self.labels).float().mean())


def main(n_train: int = 256, epochs: int = 3, strength: float = 1.0) -> list[float]:
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=20,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)  # any PreTrainedModel would do
    tasks = [
        (ContainsToken(5, 3, n_train, 0), ContainsToken(5, 3, 256, 1)),
        (ContainsToken(15, 11, n_train, 2), ContainsToken(15, 11, 256, 3)),
    ]
    # data=None: Ω is computed where we say, on unlabelled batches of our choosing
    mas = MASTrainerCallback(strength=strength, data=None)
    with tempfile.TemporaryDirectory() as out:
        for train, _ in tasks:
            args = TrainingArguments(
                output_dir=out,
                use_cpu=True,
                report_to=[],
                per_device_train_batch_size=32,
                num_train_epochs=epochs,
                learning_rate=3e-3,
                save_strategy="no",
                logging_strategy="no",
                disable_tqdm=True,
                seed=0,
            )
            Trainer(model=model, args=args, train_dataset=train, callbacks=[mas]).train()
            mas.consolidate(model, DataLoader(train.unlabelled(), batch_size=None))
    return [test.accuracy(model) for _, test in tasks]


if __name__ == "__main__":
    print("test accuracy per task after both tasks:", main())
