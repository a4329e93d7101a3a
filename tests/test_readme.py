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


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert readme_commands()[1] in ci
