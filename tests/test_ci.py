"""`.ci/run` runs the README's test command verbatim, from a bare environment."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command_with_an_empty_cache_of_its_own():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    (command,) = [b for b in blocks if b.startswith("python3 -m venv") and ".[test]" in b]
    assert "pip check" in command  # nothing installed beyond what pyproject.toml declares
    ci = (REPO / ".ci" / "run").read_text()
    lines = ci.splitlines()
    # verbatim, and any failure in it stops the script: set -e alone ignores a failure before
    # the last `&&` (a failed install or pip check)
    run = lines.index(f"{command} || exit 1")
    assert "set -euo pipefail" in lines and run < lines.index("pytest -m slow")
    # a fresh, empty cache folder, exported before the tests run
    assert re.search(r'^LIMEROBUST_CACHE="\$\(mktemp -d\b', ci, re.M)
    assert lines.index("export LIMEROBUST_CACHE") < run
