"""The README's Python example runs as written."""
import pathlib
import re


def blocks():
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_python_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(blocks()[0], "README.md", "exec"), scope)
    assert (tmp_path / "digits.npz").exists()
    assert scope["again"].num_params() == scope["net"].num_params()
    assert float(scope["loss"]) < 1.0


def test_readme_layer_alone_example():
    """The five-line example: one Affine layer, no network, trains a softmax classifier."""
    code = blocks()[1]
    assert len([line for line in code.splitlines() if line.strip()]) == 5
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert float(scope["loss"]) < 0.3 and "W" in scope["fc"].grads


def test_ci_runs_exactly_the_readme_test_command():
    root = pathlib.Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", text, re.S)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (root / ".ci" / "run").read_text().splitlines()
