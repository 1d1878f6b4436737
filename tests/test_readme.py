"""The README's Python example runs as written."""
import pathlib
import re


def test_readme_python_example(tmp_path, monkeypatch):
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert (tmp_path / "digits.npz").exists()
    assert scope["again"].num_params() == scope["net"].num_params()
    assert float(scope["loss"]) < 1.0
