"""Retrieval: FAISS vector index, similar-patient search, guideline knowledge base (issue 4)."""
