"""Distillation: teacher to student training, teacher LoRA tuning, retention report (issue 3)."""
