"""The README's API tour runs as written and its MI example lands near the truth it states."""

import os
import re

import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_api_tour_runs():
    text = open(README).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python block"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    res, truth = namespace["res"], namespace["truth"]
    assert np.all(np.abs(np.asarray(res.heldout) - truth) < 0.25)
    assert np.all(np.asarray(res.heldout_se) > 0) and np.asarray(res.converged).shape == (3,)
    assert namespace["est"].shape == (3,)
