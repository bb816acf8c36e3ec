"""``python -m hypernodes_chain``: the same command line as ``hypernodes-chain``."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
