"""Checkpoint a Hugging Face Trainer into MLflow with mlflow-persist, and resume where it stopped.

A tiny GPT-2 (built from a config: nothing is downloaded) learns to continue counting sequences. Run it
twice: the second run resumes through the Trainer's own resume from the newest checkpoint (the data order,
the random states and the TrainerState continue) and trains on to the same `--steps` total.

    python scripts/examples/transformers_example.py --tracking-uri sqlite:///mlflow.db --steps 40
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from mlflow_persist import MlflowStore, PersistConfig
from mlflow_persist.cli.inspection import history
from mlflow_persist.integrations.transformers import PersistCallback

VOCAB, LENGTH = 32, 16


class CountingSequences(torch.utils.data.Dataset):
    """Sequences start, start+1, ... (mod VOCAB): the next token is always predictable."""

    def __init__(self, size: int, seed: int) -> None:
        starts = torch.randint(0, VOCAB, (size, 1), generator=torch.Generator().manual_seed(seed))
        self.input_ids = (starts + torch.arange(LENGTH)) % VOCAB

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "labels": self.input_ids[index]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: ./mlflow.db)")
    parser.add_argument("--steps", type=int, default=40, help="total optimizer steps (max_steps)")
    parser.add_argument("--name", default="tiny-gpt2", help="the model's name in the MLflow registry")
    options = parser.parse_args()

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    )
    config = PersistConfig(
        tracking_uri=options.tracking_uri,
        monitor="eval_loss",
        mode="min",
        periodic_every_steps=10,
        keep_best=3,
        log_system_metrics=False,
    )
    callback = PersistCallback(options.name, config)
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            max_steps=options.steps,
            per_device_train_batch_size=16,
            learning_rate=3e-3,
            logging_steps=5,
            eval_strategy="steps",
            eval_steps=5,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=CountingSequences(512, seed=1),
            eval_dataset=CountingSequences(64, seed=2),
            callbacks=[callback],
        )
        trainer.train(resume_from_checkpoint=callback.resume_checkpoint())  # None on the first run

    restored = callback.restored
    if restored is None:
        print(f"started fresh and trained to step {trainer.state.global_step}")
    else:
        print(
            f"resumed from v{restored.version} ({restored.category}, step {restored.step}) and trained to step "
            f"{trainer.state.global_step}"
        )
    store = MlflowStore(config.tracking_uri, config.experiment_name)
    best = store.alias_version(options.name)
    print(f"best: v{best.version} at step {best.step}, eval_loss={best.value:.4f}; checkpoints kept:")
    for row in history(store, options.name).versions:  # what `mlflow-persist history` prints
        print(f"  v{row.version} {row.category:<11} step {row.step}")


if __name__ == "__main__":
    main()
