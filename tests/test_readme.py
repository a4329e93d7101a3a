"""The README's two commands are the ones a new user and CI run."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    return [lines[i + 1] for i, line in enumerate(lines) if line.strip() == "```bash"][:2]


def test_readme_starts_with_install_and_run_then_install_and_test():
    install_and_run, install_and_test = readme_commands()
    assert install_and_run.endswith("hf-classifier quickstart")
    assert "pip install torch==2.13.0 && pip install -e ." in install_and_run
    assert install_and_test.endswith("python -m pytest -q")


def test_ci_runs_the_readme_test_command_after_the_lint_checks():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    install, _, tests = readme_commands()[1].rpartition(" && ")
    assert tests == "python -m pytest -q" and install in ci and tests in ci
    assert ci[0].startswith("#!") and "set -euo pipefail" in ci  # any failing line fails CI
    lint = [ci.index("ruff check ."), ci.index("ruff format --check .")]
    assert ci.index(install) < min(lint) and max(lint) < ci.index(tests)


def test_the_suite_is_forced_offline_whatever_the_environment_says():
    """conftest.py overrides HF_HUB_OFFLINE=0 (and the datasets/transformers variables) from the caller's
    environment, so the tests cannot reach the Hub. Checked in a fresh interpreter that imports conftest
    the way pytest does, with every variable set to 0 beforehand."""
    import os
    import subprocess
    import sys

    probe = (
        "import runpy, sys; sys.path.insert(0, 'tests'); runpy.run_path('tests/conftest.py');"
        "import datasets, huggingface_hub, transformers.utils.hub as tf;"
        "print(huggingface_hub.is_offline_mode(), datasets.config.HF_HUB_OFFLINE, tf.is_offline_mode())"
    )
    online = {name: "0" for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**os.environ, **online},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "True", "True"]
