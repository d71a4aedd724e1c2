"""The fpmon client: ``MonitorClient`` ships each training step to the sidecar (or, with ``url=None``,
monitors in-process) without stalling training.

Modules (imports go one way, top to bottom; none uses another's private names):

- ``client``: :class:`MonitorClient`, the user's face: validates and copies ``observe``'s input, picks a
  transport and forwards ``flush``/``close``/``stats``/``alerts``/``latest`` to it.
- ``sender``: the process transport's training-process side (``SenderTransport``): the forwarding thread,
  restarts of a dead sender, the fallback to a ``Deliverer``; ``sender_process``: one sender child seen
  from the parent (``SenderProcess``, its ``BOOTSTRAP``); ``sender_child``: the child's ``main``.
- ``delivery``: the ``Deliverer``, one background thread that builds, sends, retries, spools, drains the
  spool and polls the run's alerts and latest step into a ``view`` (the thread transport, and what the sender
  process runs).
- ``pipe``: frames and wire formats between the two processes; ``items``: an observed step and how it is
  built into wire bytes; ``sinks``: where steps go (HTTP, or the database in-process), retry policy;
  ``view``: what is known of the run at the sink (``RunView``, ``LatestStep``); ``spool``: the on-disk
  spool; ``replay``: ``fpmon sync``; ``config``: ``ClientConfig``, ``ClientStats``.
"""

from .client import MonitorClient
from .config import DEFAULT_URL, ClientConfig, ClientStats, Embedder, monitor_config_diff
from .view import LatestStep

__all__ = [
    "DEFAULT_URL",
    "ClientConfig",
    "ClientStats",
    "Embedder",
    "LatestStep",
    "MonitorClient",
    "monitor_config_diff",
]
