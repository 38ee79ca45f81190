"""Configuration: the TOML file and ``INSIGHTRON_*`` variables, validated into ``Settings``.

Owns: ``settings`` (loading, ``Settings`` and what it derives: recipes, inbox lookups),
``sections`` (one pydantic model per TOML table) and ``inbox`` (the ``[[inbox]]`` table, the
one each inbox feature grows, with ``Handling``). May import: ``fs``, ``engine.languages``
(the table of language names) and the shared top-level modules.
"""
