"""Configuration: the TOML file and ``INSIGHTRON_*`` variables, validated into ``Settings``.

Owns: ``settings`` (loading, ``Settings`` and what it derives: recipes, inbox lookups) and
``sections`` (one pydantic model per TOML table). May import: ``fs``, ``engine.languages``
(the table of language names) and the shared top-level modules.
"""
