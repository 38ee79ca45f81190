"""Executors: where batches run, behind one protocol (``base.Executor``).

``base`` (the protocol, ``Slot``, the inline executor, the shared recycling policy), ``pool``
(worker processes on this machine) and its ``worker`` (the loop in each child), ``ray_actors``
(warm-model actors on a Ray cluster), ``plan`` (how many slots, threads and which compute type
this machine gives) and ``messages`` (the typed events an executor reports). Nothing here
builds a model in the daemon's process: the engine is imported inside a worker or an actor.
"""
