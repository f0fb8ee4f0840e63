"""The verdict: does information-flow stealthiness predict detection? Clean and backdoored models,
every detector and the MI-dynamics monitor on each.

``python -m experiments.detection`` from a checkout; the command is :mod:`ibjax.commands.detection`
(``python -m ibjax detection`` or ``ibjax detection`` where ibjax is installed without a checkout).
"""

from ibjax.commands.detection import main

if __name__ == "__main__":
    main()
