"""Closing the loop on the line: what it was told (the record), nightly scoring and drift, what to verify next,
live performance with intervals, and alarms that name a cause and an action.

Pure library (no Prefect, no servers): ``flows/monitor.py`` wraps it, ``alloynet line`` and ``alloynet label``
expose it. Submodules are imported where used; ``record`` is kept to the standard library and the store
interface because the serving client loads it.
"""
