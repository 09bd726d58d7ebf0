"""LoRA / QLoRA fine-tuning, its hyperparameter search, and merging an adapter into its base.

Lowest first: config (TrainConfig, recipes) < tokens (examples to ids) < batches (padding, data
order) < model (base + LoRA, adapter files) < rundir (checkpoints, metrics, summary) < loop
(run_training) < command (`toolkit train`), search (`toolkit train search`); merge (`toolkit merge`).
"""
