"""The README's commands and Python example are real: the example runs, the commands are what CI runs."""
import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    setup_and_app, setup_and_tests = blocks[0].strip(), blocks[1].strip()
    assert README.index(blocks[0]) < 40  # right after the title
    assert setup_and_app == "bash scripts/setup.sh && .venv/bin/python app.py"
    assert "pytest" in setup_and_tests
    assert setup_and_tests in (ROOT / ".ci" / "run").read_text()


def test_readme_python_example_runs(monkeypatch):
    code = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    printed = out.getvalue()
    assert "1312256" in printed
    assert "projected_tokens" in printed
    scores = [float(line.split()[0]) for line in printed.splitlines() if re.match(r"^[+-]\d\.\d{3}\s", line)]
    assert len(scores) >= 4 and scores == sorted(scores, reverse=True)
