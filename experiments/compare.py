"""Compare finished runs: stealthiness per attack and poison ratio over seeds, rankings.

``python -m experiments.compare`` from a checkout; the command is :mod:`ibjax.commands.compare`
(``python -m ibjax compare`` or ``ibjax compare`` where ibjax is installed without a checkout).
"""

from ibjax.commands.compare import main

if __name__ == "__main__":
    main()
