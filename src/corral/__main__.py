"""``python -m corral`` is the ``corral`` command."""

from corral.cli.app import main

main()
