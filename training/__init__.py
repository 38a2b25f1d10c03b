"""Ultralytics training, evaluation and the background jobs runner."""
