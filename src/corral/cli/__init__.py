"""The ``corral`` command line (Typer): one module per command family."""
