"""FHIR R4 → MEDS, from bulk-export ndjson, Bundle JSON or single-resource JSON files.

Each clinical resource becomes one MEDS event (an Observation with components becomes one event
per component). Codes are ``{vocabulary}/{code}`` from the first coding whose system we know
(``http://loinc.org`` → ``LOINC``), so FHIR and OMOP sources share one code space; the coding's
``display`` becomes the code's description. Patients give ``MEDS_BIRTH``, ``MEDS_DEATH`` and
static ``Gender/…``, ``Race/…``, ``Ethnicity/…`` events; Encounters give a visit start event
(``Visit/IP``, ``Visit/OP``, ``Visit/ER``…) and ``MEDS_VISIT_END``, both carrying ``visit_id``,
and every resource that names its encounter carries the same ``visit_id``.

Identity: ``subject_id`` is always a hash of the Patient's logical id (:func:`subject_id_for`),
never the id itself, even when that id is numeric, so one rule covers every server; the mapping
is kept in ``metadata/subject_source_ids.parquet``. ``visit_id`` is the same hash of the
Encounter id (:func:`visit_id_for`). Resources in a transaction Bundle often have no ``id``;
their id is then taken from the entry's ``fullUrl`` (``urn:uuid:<id>`` → ``<id>``), which is the
id a bulk export of the same data carries, so both forms of one dataset give the same ids.

Reading is one streaming pass; references (``Patient/x``, ``urn:uuid:…``, absolute URLs) are
resolved at the end, so a resource may refer to one that comes later or sits in another file.
Nothing is dropped silently: every resource or coding left out is counted in
``IngestReport.skipped`` by reason. A second copy of a resource id is skipped (counted); a
second Patient with the same id but different content is an error naming both places.

One concept a module: ``base`` (error, ids, times), ``vocab`` (code systems and value sets),
``files`` (reading and references), ``rows`` (the accumulated rows, code picking), ``resources``
(one handler per resource type) and ``convert`` (the whole conversion).
"""

from ehrembed.ehr.fhir.base import ETL_NAME, FhirError, parse_fhir_time, stable_id, subject_id_for, visit_id_for
from ehrembed.ehr.fhir.convert import fhir_to_events, ingest_fhir
from ehrembed.ehr.fhir.resources import HANDLERS
from ehrembed.ehr.fhir.vocab import SYSTEM_PREFIXES

__all__ = [
    "ETL_NAME",
    "HANDLERS",
    "SYSTEM_PREFIXES",
    "FhirError",
    "fhir_to_events",
    "ingest_fhir",
    "parse_fhir_time",
    "stable_id",
    "subject_id_for",
    "visit_id_for",
]
