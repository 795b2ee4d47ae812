"""What every stage script shares: reading params and turning user errors into clean exits."""

from __future__ import annotations

import sys
from typing import Callable

from lungseg import config
from lungseg.errors import LungsegError


def run(main: Callable[[dict], None], params_path: str = "params.yaml") -> None:
    """Call main(params); a problem with the user's params, data or files exits with its message
    and status 2 instead of a traceback (bugs in lungseg itself still show their traceback)."""
    try:
        params = config.read_params(params_path)
        config.validate(params, params_path)
        main(params)
    except LungsegError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
