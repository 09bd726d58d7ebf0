"""LoRA / QLoRA fine-tuning, its hyperparameter search, and merging an adapter into its base."""
