"""alloynet's own log lines (training epochs, ingest warnings, registry events) in the Prefect UI.

alloynet/ never imports Prefect; it logs through ``logging`` under the ``alloynet`` logger tree (the
trainer's epoch line goes to ``alloynet.train``). Prefect's ``PREFECT_LOGGING_EXTRA_LOGGERS`` would attach
its API handler to such loggers but leave their level at WARNING (the root's), so INFO lines such as the
epoch line would still be dropped. Every flow therefore calls ``route_library_logs()`` first: it attaches
Prefect's API handler to ``alloynet`` once per process and lets INFO through. The handler forwards only
records emitted inside a flow or task run, so alloynet used outside a flow run in the same process (the
CLI, other tests) never warns about a missing run context.
"""

from __future__ import annotations

import logging

from prefect.logging.handlers import APILogHandler

LIBRARY_LOGGER = "alloynet"


class _InRunAPILogHandler(APILogHandler):
    def emit(self, record: logging.LogRecord) -> None:
        from prefect.context import FlowRunContext, TaskRunContext

        if getattr(record, "flow_run_id", None) or FlowRunContext.get() or TaskRunContext.get():
            super().emit(record)


def route_library_logs(level: int = logging.INFO) -> None:
    """Send alloynet's log records of ``level`` and above to the current flow run's logs (idempotent)."""
    logger = logging.getLogger(LIBRARY_LOGGER)
    if not any(isinstance(h, APILogHandler) for h in logger.handlers):
        handler = _InRunAPILogHandler()
        handler.setLevel(level)
        logger.addHandler(handler)
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
