"""The daemon: wiring, the main loop, signals, reload, status and shutdown.

Owns: ``daemon`` (``Daemon``: builds the stages and runs the loop), ``pipeline`` (intake ->
dispatch -> outcomes as one step), ``oneshot`` (files given by hand through the same
pipeline), ``reload`` (SIGHUP: a config applied whole or rejected whole), ``status``
(readiness, the snapshot and heartbeat, what the pages show), ``notify`` (sd_notify).
May import every stage package below it: ``web``, ``dispatch``, ``intake``, ``outcomes``,
``executors``, ``search``, ``journal``, ``config``, ``fs`` and the shared modules; never
``engine`` beyond ``model_store`` (the model is built in workers only).
"""
