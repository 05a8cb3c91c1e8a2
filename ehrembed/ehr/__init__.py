"""Records in: OMOP CDM / FHIR R4 / MEDS ingest, vocabulary, Markdown serializer, synthetic cohorts."""
