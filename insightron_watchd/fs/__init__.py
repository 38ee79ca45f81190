"""The file system as the daemon meets it: names as bytes, folders held by handle, path rules.

Owns: ``names`` (a path is bytes until a person reads it), ``paths`` (which files are audio,
which to ignore, where a transcript may be written), ``handles`` (what was checked is what is
opened: folder descriptors, no-follow opens, identities). May import: the shared top-level
modules (``errors``, ``values``) and nothing else of the package.
"""
