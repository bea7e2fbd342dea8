"""The supervisor `alloynet serve start` runs in its own process (infra/serve.py has the commands).

Its parts: ``settings`` (what is served, where; the state directory's files), ``releases`` (champion versions
fetched and verified, numbered by ``alloynet.registry.publish.serving_version``), ``triton_server`` and
``torchserve_server`` (start, swap, probe, stop of each server), ``keys`` (TorchServe's keys renewed on time),
``health`` (probes; a server that stops answering counts as hung) and ``loop`` (the ``Supervisor``: restarts,
following the champion, the state file).
"""

from infra.supervisor.loop import Supervisor

__all__ = ["Supervisor"]
