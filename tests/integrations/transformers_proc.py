"""A Hugging Face Trainer run with PersistCallback: a tiny BERT (built from a config, nothing downloaded) learns
a synthetic classification task, evaluated on `eval_loss` (the monitor).

Usage: transformers_proc.py URI DIGEST_LOG [--max-steps N] [--stop-at-step N] [--step-sleep SECONDS] [--native | --plain]
                           [--report-to-mlflow MLFLOW_TRACKING_URI]
`--report-to-mlflow` trains with `report_to=["mlflow"]` and that `MLFLOW_TRACKING_URI` (Hugging Face's
MLflowCallback starts a new run per train()).
`--native` resumes through the Trainer's own resume (`resume_from_checkpoint=callback.resume_checkpoint()`);
`--plain` trains without the callback (the uninterrupted oracle). Both print `DONE {...}` at the end: the
Trainer's global_step and digests of the weights and the optimizer state.
Records with DigestLog: `saved` (step, category, digest of the model and optimizer state) after every save
decision and at train end (the state the final checkpoint holds), `eval` (step, eval_loss) as the Trainer
delivers it. Prints `RESTORED {...}` right after the restore at train begin, `STEP n` after every optimizer
step and `END {...}` at train end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlflow_persist as mp  # noqa: E402
from integrations.support import DigestLog, emit, keep_everything_config, state_digest  # noqa: E402
from mlflow_persist.integrations.transformers import PersistCallback  # noqa: E402

MODEL_NAME = "tiny_bert"
VOCAB = 64


class ToyDataset(torch.utils.data.Dataset):
    """Random token sequences; the label is whether the first token is in the lower half of the vocabulary."""

    def __init__(self, size: int, seed: int, length: int = 12) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, VOCAB, (size, length), generator=generator)
        self.labels = (self.input_ids[:, 0] < VOCAB // 2).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def training_args(output_dir: str, max_steps: int, **overrides: Any) -> TrainingArguments:
    values: dict[str, Any] = dict(
        output_dir=output_dir,
        save_strategy="no",
        report_to="none",
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=3,
        max_steps=max_steps,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        learning_rate=3e-3,
        use_cpu=True,
        seed=7,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def persist_config(uri: str) -> mp.PersistConfig:
    return keep_everything_config(uri, "eval_loss")


class StopAtStep(TrainerCallback):
    """Ends train() after `step` optimizer steps, as an interruption would (the schedule still spans max_steps)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


class RecordingCallback(PersistCallback):
    """Records what the trainer itself saw: its state at each save decision and the evaluations it got."""

    def __init__(self, config: mp.PersistConfig, log: DigestLog, step_sleep: float) -> None:
        super().__init__(MODEL_NAME, config)
        self.log = log
        self.step_sleep = step_sleep
        self.objects: tuple[Any, Any] | None = None

    def digest(self) -> str:
        assert self.objects is not None
        model, optimizer = self.objects
        return state_digest(model.state_dict(), optimizer.state_dict())

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        super().on_train_begin(args, state, control, **kwargs)
        self.objects = (kwargs["model"], kwargs["optimizer"])
        info = self.restored
        emit(
            "RESTORED",
            {
                "version": info.version if info else None,
                "category": info.category if info else None,
                "step": info.step if info else None,
                "value": info.value if info else None,
                "run_id": info.run_id if info else None,
                "global_step": state.global_step,
                "digest": self.digest(),
                "rank": args.process_index,
            },
        )

    def persist_step(self, step: int | None = None, **metrics: float) -> mp.SaveDecision:
        decision = super().persist_step(step, **metrics)
        if decision.save:
            assert self.handle is not None
            self.log.append(
                event="saved", step=self.handle.current_step, category=decision.category, digest=self.digest()
            )
        return decision

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        super().on_step_end(args, state, control, **kwargs)
        print(f"STEP {state.global_step}", flush=True)
        time.sleep(self.step_sleep)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        self.log.append(event="eval", step=state.global_step, eval_loss=float(metrics["eval_loss"]))
        super().on_evaluate(args, state, control, metrics=metrics, **kwargs)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.log.append(event="saved", step=state.global_step, category="final", digest=self.digest())
        print("END " + json.dumps({"step": state.global_step}), flush=True)
        super().on_train_end(args, state, control, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("digest_log", type=Path)
    parser.add_argument("--max-steps", type=int, default=24)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--stop-at-step", type=int, help="end train() after this step (of --max-steps)")
    parser.add_argument("--report-to-mlflow", metavar="MLFLOW_TRACKING_URI")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--native", action="store_true")
    mode.add_argument("--plain", action="store_true")
    options = parser.parse_args()
    callback = RecordingCallback(persist_config(options.uri), DigestLog(options.digest_log), options.step_sleep)
    reporting: dict[str, Any] = {}
    if options.report_to_mlflow:
        os.environ["MLFLOW_TRACKING_URI"] = options.report_to_mlflow
        os.environ.pop("HF_MLFLOW_LOG_ARTIFACTS", None)
        reporting["report_to"] = ["mlflow"]
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = Trainer(
            model=tiny_bert(),
            args=training_args(output_dir, options.max_steps, **reporting),
            train_dataset=ToyDataset(256, seed=1),
            eval_dataset=ToyDataset(64, seed=2),
            callbacks=([] if options.plain else [callback])
            + ([StopAtStep(options.stop_at_step)] if options.stop_at_step else []),
        )
        output = trainer.train(resume_from_checkpoint=callback.resume_checkpoint() if options.native else None)
        done = {
            "global_step": trainer.state.global_step,
            "weights": state_digest(trainer.model.state_dict()),
            "optimizer": state_digest(trainer.optimizer.state_dict()),
            "log_steps": [record["step"] for record in trainer.state.log_history if "loss" in record],
            "trained_steps": round(output.metrics["train_steps_per_second"] * output.metrics["train_runtime"]),
        }
        emit("DONE", {**done, "rank": trainer.args.process_index})


if __name__ == "__main__":
    main()
