"""The result store: Parquet tables on a local folder or S3-compatible storage.

Write side: ``check_store`` at start-up, ``save_study_config``, then a
``StoreWriter`` per study (``write_examples``, ``write_trial``). Read side:
``open_study`` (datasets incl. ``generations``, ``joined_frame``, ``layer_matrix``,
``completed_trials``), ``compact``, ``export_vectors``, ``cleanup``.

May import: pyarrow, boto3, numpy, pandas. Never torch or ``workers`` (worker
results are read by their attributes only), so the store opens anywhere.
"""

from orchestrator.store.check import CleanupReport, StoreCheck, check_store, cleanup
from orchestrator.store.compact import CompactReport, compact
from orchestrator.store.errors import (
    NoSuchStudy,
    StoreConfigError,
    StoreError,
    StoreNameError,
    StoreWriteError,
    StudyConfigMismatch,
)
from orchestrator.store.export import (
    ControlVector,
    check_exportable,
    export_vectors,
    read_control_vector,
)
from orchestrator.store.lease import Holder, LeaseHeld, LeaseLost, StudyLease, read_holder
from orchestrator.store.reader import (
    StoredTrial,
    Study,
    list_studies,
    open_study,
    study_at,
)
from orchestrator.store.records import (
    ExampleRecord,
    GenerationRecord,
    StudyContext,
    TransferRecord,
    TrialRecord,
    VectorRecord,
)
from orchestrator.store.retry import RetryPolicy
from orchestrator.store.roots import StoreRoot, resolve_root
from orchestrator.store.schemas import (
    EXAMPLES_SCHEMA,
    GENERATIONS_SCHEMA,
    SCHEMA_VERSION,
    TRANSFER_SCHEMA,
    code_version,
    trials_schema,
    vector_id,
    vectors_schema,
)
from orchestrator.store.study_config import (
    config_hash,
    load_study_config,
    redact,
    save_study_config,
)
from orchestrator.store.writer import StoreWriter, WriteReport

__all__ = [
    "EXAMPLES_SCHEMA",
    "GENERATIONS_SCHEMA",
    "SCHEMA_VERSION",
    "TRANSFER_SCHEMA",
    "CleanupReport",
    "ControlVector",
    "CompactReport",
    "ExampleRecord",
    "GenerationRecord",
    "Holder",
    "LeaseHeld",
    "LeaseLost",
    "NoSuchStudy",
    "RetryPolicy",
    "StoreCheck",
    "StoreConfigError",
    "StoreNameError",
    "StoreError",
    "StoreRoot",
    "StoreWriteError",
    "StoreWriter",
    "StoredTrial",
    "Study",
    "StudyConfigMismatch",
    "StudyContext",
    "StudyLease",
    "TransferRecord",
    "TrialRecord",
    "VectorRecord",
    "WriteReport",
    "check_exportable",
    "check_store",
    "cleanup",
    "code_version",
    "compact",
    "config_hash",
    "export_vectors",
    "list_studies",
    "load_study_config",
    "study_at",
    "open_study",
    "read_control_vector",
    "read_holder",
    "redact",
    "resolve_root",
    "save_study_config",
    "trials_schema",
    "vector_id",
    "vectors_schema",
]
