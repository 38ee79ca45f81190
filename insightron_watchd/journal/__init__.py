"""The durable journal: one SQLite file (WAL), the single source of truth after a crash.

Owns: ``journal`` (``Journal``: the file records and their states), ``queues`` (the units of
long files and the delivery queue, kept in the same database), ``db`` (the SQLite file
itself: opening it safely, schema versions, a full disk). May import: ``fs`` and the shared
top-level modules.
"""
