"""Prediction: tasks and labelers, few-shot heads, count baseline, metrics and report (issue 5)."""
