"""Prognostic pretraining: vectors learned from each cohort's own future, on its train split.

The signal counts lack is what tends to happen next. ``ehrembed pretrain`` samples prediction points
on train subjects' timelines (:mod:`.points`), reads each point's past as the count baseline's
inputs, and learns to anticipate the next occurrence of ~1,000 codes chosen without any task
(:mod:`.targets`), as time-to-event with censoring (MOTOR's piecewise-exponential loss) or as
occurrence within horizons (:mod:`.losses`). The network's bottleneck is the vector (:mod:`.model`);
closed-form controls (reduced-rank ridge, SVD, the untrained network) are fitted the same way
(:mod:`.linear`, :mod:`.train`). A model folder is an encoder wherever encoders are named
(``prognosis=DIR``), and its head gives zero-shot risks of future codes.

Importing this package loads no torch: the model lives in :mod:`.model`, the folder check in :mod:`.folder`.
"""
