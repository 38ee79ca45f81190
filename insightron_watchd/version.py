"""The package's version, in a module of its own: stages import it without importing the
package ``__init__`` (whose lazy names lead to the batch API)."""

__version__ = "0.1.0"
