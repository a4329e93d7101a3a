"""Evaluation: metrics, the one inference engine, predictions, reports and pictures."""
