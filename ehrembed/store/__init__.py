"""The SQL store: datasets, subjects, artifacts, tasks and labels, API keys, audit log."""
