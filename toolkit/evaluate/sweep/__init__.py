"""`toolkit sweep`: search decoding parameters with Optuna, scored against references (see command.py)."""
