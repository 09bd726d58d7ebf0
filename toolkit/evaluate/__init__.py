"""Evaluation: metrics, statistics, decoding-parameter sweeps, compare and its report."""
