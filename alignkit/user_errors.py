"""Bad input on the command line tools: one ``alignkit: error:`` line and exit status 2.

A stack trace would only bury the fix the message names; ``HYDRA_FULL_ERROR=1`` shows it, as
it does for ``python -m alignkit``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def one_line_errors(*errors: type[BaseException]) -> Iterator[None]:
    """Turn ``errors`` raised inside into one line on stderr and ``sys.exit(2)``."""
    try:
        yield
    except errors as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"alignkit: error: {error}", file=sys.stderr)
        sys.exit(2)
