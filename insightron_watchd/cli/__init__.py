"""The command line: one module per command family.

Owns: ``main`` (``insightron-watchd``: parsing, ``run``, ``check-config``, ``retry``,
``history``), ``status``, ``search``, ``transcribe`` (files given by hand, through the batch
API), ``service`` (the systemd unit or launchd agent). May import anything in the package;
nothing imports it.
"""
