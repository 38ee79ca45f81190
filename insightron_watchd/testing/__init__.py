"""Testing kit: what the suite and the benchmark drive the daemon with, and what an embedding
application can test its own wiring with.

``support``: ``FakeEngine``/``ScriptedEngine`` (engines for ``engine_factory``: a text file is
its own transcript), ``FakeExecutor`` (slots a test finishes by hand), ``DaemonProc`` (the real
``insightron-watchd run`` as a subprocess, its JSON log collected) and ``wait_for`` (a bounded
wait, never a fixed sleep). ``rig``: ``Rig``, the daemon built in process with a fake executor,
watcher and clock, and ``write_config``.
"""
