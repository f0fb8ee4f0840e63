"""Several runs (attacks x poison ratios x seeds) with one shared protocol, then their comparison.

``python -m experiments.sweep`` from a checkout; the command is :mod:`ibjax.commands.sweep`
(``python -m ibjax sweep`` or ``ibjax sweep`` where ibjax is installed without a checkout).
"""

from ibjax.commands.sweep import main

if __name__ == "__main__":
    main()
