"""Prefect flows over the alloynet library: ingest -> retrain -> evaluate -> promote, and `nightly`.

Each flow is a thin wrapper: the work is done by plain functions in ``alloynet.steps`` and
``alloynet.registry``; deployments are declared in ``prefect.yaml`` at the repository root.
"""
