"""The use cases, one module each: what the CLI, the API and the main job run, so each rule lives once.

- :mod:`.embeddings`: record an embedding set with the encoder name the export endpoint finds it by;
- :mod:`.indexes`: build a similar-patient index from embedding sets and record it (one artifact shape),
  and find the index recorded for a dataset;
- :mod:`.heads`: fit a few-shot head on a task's labels (a stable sample) or on labelled examples, and
  record it;
- :mod:`.reports`: record a written benchmark report for its dataset, list them, and read one back as numbers.

Front ends parse their input, call these and format the result; a service raises the error family
(:mod:`ehrembed.errors`) and never prints. Layering (``make lint``): front ends > main job > services >
store > the stages.
"""
