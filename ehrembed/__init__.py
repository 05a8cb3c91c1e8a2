"""ehrembed: structured patient records (OMOP CDM, FHIR R4, MEDS) to vectors.

Stages live in sub-packages: ``ehr`` (records in, Markdown out), ``store`` (SQL metadata),
``encoders``, ``retrieval``, ``distill``, ``predict`` and ``api``. Importing this package does
nothing but define the version.
"""

__version__ = "0.1.0"
