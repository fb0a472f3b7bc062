"""What every benchmark shares: a free port, and running ``main`` in a temporary directory that
is removed afterwards (Ctrl-C included) unless ``--keep`` was given, after compiling corral's
modules once (:func:`compile_corral`)."""

from __future__ import annotations

import argparse
import asyncio
import compileall
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console

__all__ = ["compile_corral", "free_port", "run_in_tempdir"]


def compile_corral() -> None:
    """Compile corral's modules to bytecode files, as ``pip install`` does for an installed
    package. An editable install run with ``PYTHONDONTWRITEBYTECODE`` set (as on the machines
    these tables come from) otherwise compiles every module again in every process a
    benchmark starts: about 0.1 s of CPU per process, which a production install never pays.
    Files already up to date are left alone."""
    import corral

    compileall.compile_dir(Path(corral.__file__).parent, quiet=1)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_in_tempdir(
    main: Callable[[argparse.Namespace, Path], Coroutine[Any, Any, None]],
    args: argparse.Namespace,
    prefix: str,
    console: Console,
) -> None:
    """Run ``main(args, tmp)``; exit 130 on Ctrl-C; remove ``tmp`` unless ``args.keep``."""
    compile_corral()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        asyncio.run(main(args, tmp))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("interrupted: everything started has been stopped")
        sys.exit(130)
    finally:
        if getattr(args, "keep", False):
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
