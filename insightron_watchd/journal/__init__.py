"""The durable journal: one SQLite file (WAL), the single source of truth after a crash.

Owns: ``journal`` (``Journal``: the file records and their states, and the stores it holds),
``units`` (``journal.units``: the finished units of long files), ``deliveries``
(``journal.deliveries``: webhooks, hooks and callbacks waiting to go out), each owning its
tables' schema in the same database, and ``db`` (the SQLite file itself: opening it safely,
the connection, a full disk, the ``Store`` base). May import: ``fs`` and the shared
top-level modules.
"""
