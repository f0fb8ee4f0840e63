"""The paper, reproduced: its grid of runs, figures, stealthiness table and claims table.

``python -m experiments.paper`` from a checkout; the command is :mod:`ibjax.commands.paper`
(``python -m ibjax paper`` or ``ibjax paper`` where ibjax is installed without a checkout).
"""

from ibjax.commands.paper import main

if __name__ == "__main__":
    main()
