"""One run of the study (every StudyConfig field a flag; --help).

``python -m experiments.study`` from a checkout; the command is :mod:`ibjax.commands.study`
(``python -m ibjax study`` or ``ibjax study`` where ibjax is installed without a checkout).
"""

from ibjax.commands.study import main

if __name__ == "__main__":
    main()
