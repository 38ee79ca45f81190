"""What becomes of a file once its transcription ends: outputs written, retries, quarantine.

Owns: ``outcomes`` (``Outcomes``: transcripts to outputs, failures to records), ``writers``
(the output formats and atomic writes), ``placement`` (where outputs go, where a source is
moved), ``containment`` (one failing file ends as its own failure record, never the loop),
``outbox_wait`` (writes held while the outbox cannot take them), ``deliveries`` (webhooks and
hook commands after a file ends, from a durable queue). May import: ``journal``, ``config``,
``fs`` and the shared top-level modules.
"""
