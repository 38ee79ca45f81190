"""Intake: watcher events and scans become settled, fingerprinted, recorded jobs ready to run.

Owns: ``intake`` (``Intake``: the stage), ``watcher`` (watchdog events to ``FileSeen``),
``inboxes`` (the inbox folders, their watchers, scans, missing and degraded ones), ``locks``
(one daemon per inbox and per tree), ``settle`` (when a file has stopped changing),
``hasher`` (content fingerprints off the loop), ``twins`` (files whose content was done
already), ``make_job`` (a journal record handed to dispatch as a ``Job``). May import:
``outcomes``, ``journal``, ``config``, ``fs``, ``engine.model_store`` (the length probe) and
the shared top-level modules.
"""
