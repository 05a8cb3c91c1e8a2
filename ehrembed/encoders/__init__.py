"""Encoders: the Encoder protocol, teacher LLM and student BERT encoders, embedding cache (issue 3)."""
