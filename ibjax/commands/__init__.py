"""ibjax's command-line programs, one module each, each with ``main(argv=None)``.

- :mod:`~ibjax.commands.quickstart`: the study in miniature on embedded MNIST digits (no download).
- :mod:`~ibjax.commands.study`: one run of the study (every :class:`~ibjax.study.StudyConfig` field
  a flag).
- :mod:`~ibjax.commands.sweep`: attacks x poison ratios x seeds, in populations, then compared.
- :mod:`~ibjax.commands.compare`: finished runs compared per attack and poison ratio over seeds.
- :mod:`~ibjax.commands.paper`: the paper's grid, its figures, stealthiness table and claims table.
- :mod:`~ibjax.commands.detection`: clean and backdoored models, every detector and the MI monitor,
  and whether stealthiness predicts detection.

From a checkout they run as ``python -m experiments.NAME`` (the experiments folder, which is not
installed); an installed ibjax runs them as ``python -m ibjax NAME`` or the console script
``ibjax NAME``. They live in the package rather than in experiments/ so that both work with one
copy of each program.
"""

COMMANDS = ("quickstart", "study", "sweep", "compare", "paper", "detection")
"""The command names (modules of this package)."""
