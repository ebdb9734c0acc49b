"""Reports of a study, read from the result store only: ``report.html`` with
PNG figures (matplotlib) and ``summary.parquet``.

May import: ``orchestrator.store``, matplotlib, pandas, optuna (importances).
Never Ray or torch: a report needs no cluster and no model.
"""

from orchestrator.report.build import ReportResult, build_report
from orchestrator.report.data import ReportData, load_report_data, summary_frame
from orchestrator.report.figures import SIZES_PX

__all__ = [
    "SIZES_PX",
    "ReportData",
    "ReportResult",
    "build_report",
    "load_report_data",
    "summary_frame",
]
