"""The daemon's HTTP doors: the server, its pages, the OpenAI-compatible API and uploads.

Owns: ``doors`` (the server's life: start, stop, restart on reload), ``server`` (Starlette
on uvicorn in a thread of its own; the Host, Origin and token checks), ``page`` (the status and search pages), ``openai_door`` (``/v1/audio/...``),
``desk`` (where uploads become journal jobs and where their ends are told), ``uploads`` (a
multipart body streamed into a private spool). May import: ``search``, ``outcomes``,
``journal``, ``config``, ``fs``, ``engine.languages`` and the shared top-level modules;
never ``daemon`` (the daemon hands the doors what they serve).
"""
