"""Dispatch: ready jobs become micro-batches and units on an executor's idle slots.

Owns: ``dispatcher`` (``Dispatcher``: what goes where, and every result handed on to
outcomes), ``batcher`` (micro-batches), ``fairness`` (which waiting work gets the next free
slot), ``units`` (long files cut into units of bounded work, their plan and their join),
``recheck`` (is each file still the one that settled, before work is handed out). May
import: ``executors``, ``outcomes``, ``journal``, ``config``, ``fs`` and the shared top-level
modules.
"""
