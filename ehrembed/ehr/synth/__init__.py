"""Seeded synthetic MEDS cohorts: realistic codes, visits, lab dynamics and planted signal.

``generate_cohort(SynthConfig(n_subjects=100_000), out)`` writes a MEDS folder in shards, so
memory does not grow with the cohort. Every subject has sex, race/ethnicity and birth; chronic
conditions (ICD-10-CM) start with age-, BMI-, smoking- and comorbidity-dependent hazards; visits
are outpatient, emergency and inpatient (length of stay grows with comorbidity burden, HF/CKD
patients are readmitted more often); labs (LOINC, with units and reference ranges) follow latent
trajectories, e.g. eGFR falls and creatinine rises for months before a CKD diagnosis, HbA1c and
glucose climb before a diabetes diagnosis, potassium rises with CKD and ACE inhibitors; RxNorm
drugs start at the visit that diagnosed their indication; symptoms (palpitations before atrial
fibrillation, dyspnea and edema before heart failure) and procedures (CPT-4) appear around them.

The signal is planted but noisy: latent onsets precede diagnoses by a random delay, labs carry
measurement noise, and symptoms also occur in subjects who never develop the condition.

Output depends only on the config (seed, size, window, shard size): the same config gives
byte-identical ``data/*.parquet``. Codes (RxNorm names, LOINC long common names, ICD-10-CM
descriptions from ``simple_icd_10_cm``) are real; the patients are not.
"""

from .cohort import generate_cohort
from .config import SynthConfig
from .tables import synth_codes

__all__ = ["SynthConfig", "generate_cohort", "synth_codes"]
