"""Framework integrations: callbacks that bring mlflow-persist to the frameworks users already train with.

- `mlflow_persist.integrations.lightning.PersistCallback`: a Lightning `Callback` (extra `lightning`);
- `mlflow_persist.integrations.transformers.PersistCallback`: a Hugging Face `TrainerCallback` (extra
  `transformers`);
- `mlflow_persist.integrations.sb3.PersistCallback`: a Stable-Baselines3 `BaseCallback` (extra `sb3`);
- `mlflow_persist.integrations.distributed`: the rank-0-writes wrapper the callbacks use under `torch.distributed`.

Each module imports its framework; the core never imports any of them.
"""
