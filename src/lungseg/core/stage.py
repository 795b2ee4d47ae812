"""What every stage script shares: reading params and turning user errors into clean exits."""

from __future__ import annotations

import sys
from typing import Callable

from lungseg.core import config
from lungseg.core.errors import LungsegError

EXIT_BAD_INPUT = 2  # a problem with the user's params, data or files
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report a process ended by SIGINT


def run(main: Callable[[dict], None], params_path: str = "params.yaml") -> None:
    """Read and validate the params, then call main(params), exiting cleanly on the user's errors.

    A problem with the user's params, data or files exits with its message and status 2 instead of a traceback
    (bugs in lungseg itself still show their traceback), and Ctrl-C exits 130 with one line (outputs are
    written atomically, so none is half-written).

    Args:
        main: the stage's work, given every section of params.yaml as read (config.read_params).
        params_path: the params file.

    Raises:
        SystemExit: status EXIT_BAD_INPUT (2) on a LungsegError, EXIT_INTERRUPTED (130) on Ctrl-C.
    """
    try:
        params = config.read_params(params_path)
        config.validate(params, params_path)
        main(params)
    except LungsegError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
