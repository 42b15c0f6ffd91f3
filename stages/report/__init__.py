"""The report stage: metrics/<C>.json and the build records -> reports/<C>.md,
reports/summary.md, reports/index.html (one self-contained page that opens offline), the
pictures plots/pareto.png and plots/sizes.png, the CSVs behind `dvc plots`, and README's summary.

One module per job: `format` (cells and tables), `class_page` (reports/<C>.md), `summary` (the
cross-class tables), `plots` (pictures and the offline page), `write` (reading records, writing
every file, README embedding).
"""

from __future__ import annotations

from .class_page import class_report, runs_on_section
from .summary import data_table, summary
from .write import ReportError, embed, embed_file, write_reports

__all__ = [
    "ReportError",
    "class_report",
    "data_table",
    "embed",
    "embed_file",
    "runs_on_section",
    "summary",
    "write_reports",
]
