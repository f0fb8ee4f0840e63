"""The suite's own set-up (tests/conftest.py): the user's data cache is never the tests'."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MARK = "IBJAX_TEST_SESSION_IBJAX_CACHE"


def _cache_after_conftest(env: dict) -> str:
    code = "import conftest, os; print(os.environ['IBJAX_CACHE'])"
    # The checkout under test first: from tests/ alone, `import ibjax` would find whatever is installed.
    env = {**env, "PYTHONPATH": os.path.dirname(HERE)}
    p = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True, check=True)
    return p.stdout.strip()


def test_a_users_ibjax_cache_is_replaced_and_a_sessions_own_is_inherited(tmp_path):
    user = str(tmp_path / "user-cache")
    # TMPDIR: the directories conftest makes in these subprocesses go with tmp_path.
    env = {**{k: v for k, v in os.environ.items() if k != MARK}, "TMPDIR": str(tmp_path)}
    seen = _cache_after_conftest({**env, "IBJAX_CACHE": user})
    assert seen != user and os.path.dirname(seen) == str(tmp_path)
    assert os.path.basename(seen).startswith("ibjax-data-cache-")
    assert not os.path.exists(user)
    # An xdist worker (or a test's subprocess) inherits the controller's directory and its mark.
    session = str(tmp_path / "session-cache")
    assert _cache_after_conftest({**env, "IBJAX_CACHE": session, MARK: session}) == session
