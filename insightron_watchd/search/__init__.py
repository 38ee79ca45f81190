"""Full-text search over every transcript: the index and what a person types into it.

Owns: ``index`` (the FTS index beside the journal, fed as files end), ``query`` (parsing a
query, shaping hits and snippets). May import: ``journal``, ``fs`` and the shared top-level
modules.
"""
