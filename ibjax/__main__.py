"""``python -m ibjax COMMAND [flags]`` (or the console script ``ibjax COMMAND``): ibjax's commands
where ibjax is installed without a checkout (:mod:`ibjax.commands`; from a checkout,
``python -m experiments.COMMAND`` runs the same programs)."""

from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

from ibjax.commands import COMMANDS


def main(argv: Optional[Sequence[str]] = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = f"usage: python -m ibjax {{{','.join(COMMANDS)}}} [flags]  (COMMAND --help for its flags)"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return None
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        raise SystemExit(2)
    return importlib.import_module(f"ibjax.commands.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    main()
