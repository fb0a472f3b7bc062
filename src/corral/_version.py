"""The corral release number, read by the build backend and by the wire protocol."""

__version__ = "0.1.0"
