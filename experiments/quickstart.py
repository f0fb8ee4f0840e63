"""The README's main job: the whole study in miniature, offline, on 2 CPU cores.

``python -m experiments.quickstart`` from a checkout; the command is :mod:`ibjax.commands.quickstart`
(``python -m ibjax quickstart`` or ``ibjax quickstart`` where ibjax is installed without a checkout).
"""

from ibjax.commands.quickstart import main

if __name__ == "__main__":
    main()
