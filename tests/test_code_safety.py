"""Static checks over PVTT's own code: nothing that can execute a file's contents or install packages.

Walks the syntax tree of every module in the pack (not text search, so ``model.eval()`` is fine):
no ``eval``/``exec``/``compile`` builtins, no ``pickle``/``marshal`` loading, ``torch.load`` only with
``weights_only=True``, and no ``pip`` run from code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("__init__.py", "nodes", "pvtt_train", "pvtt_accel")
MODULES = sorted(p for name in PACKAGES for p in ([ROOT / name] if name.endswith(".py") else (ROOT / name).rglob("*.py")))


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def dotted(func: ast.expr) -> str:
    """``torch.load`` for ``torch.load(...)``; ``eval`` for ``eval(...)``; '' for anything else."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
        return ".".join(reversed(parts))
    return ""


def problems(path: Path, root: Path = ROOT) -> list[str]:
    found = []
    for call in calls(ast.parse(path.read_text(), str(path))):
        name = dotted(call.func)
        where = f"{path.relative_to(root)}:{call.lineno}"
        if name in ("eval", "exec", "compile", "__import__"):
            found.append(f"{where}: {name}() runs code from data")
        elif name in ("pickle.load", "pickle.loads", "marshal.load", "marshal.loads", "dill.load"):
            found.append(f"{where}: {name} unpickles, which can run code")
        elif name == "torch.load" and not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                                              and k.value.value is True for k in call.keywords):
            found.append(f"{where}: torch.load without weights_only=True")
        elif name.split(".")[0] in ("subprocess", "os") and any(
                isinstance(c, ast.Constant) and isinstance(c.value, str) and "pip" in c.value.split()
                for arg in call.args for c in ast.walk(arg)):
            found.append(f"{where}: runs pip at runtime")
    return found


def test_there_are_modules_to_check():
    assert len(MODULES) > 50


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_cannot_execute_data_or_install_packages(path):
    assert problems(path) == []


def test_the_checks_catch_what_they_look_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle, torch, subprocess\neval('1')\npickle.loads(b'')\ntorch.load('x')\n"
                   "subprocess.run(['python', '-m', 'pip', 'install', 'x'])\nmodel.eval()\n"
                   "torch.load('y', weights_only=True)\n")
    found = problems(bad, tmp_path)
    assert [f.split(": ", 1)[1] for f in found] == ["eval() runs code from data", "pickle.loads unpickles, which can run code",
                                                    "torch.load without weights_only=True", "runs pip at runtime"]


# --- nodes report errors; they never print and return an empty result ---------------------------------

NODE_MODULES = sorted((ROOT / "nodes").glob("*.py"))


def swallowed_errors(path: Path, root: Path = ROOT) -> list[str]:
    """``print`` calls anywhere in a node module, and ``except`` blocks in a node's FUNCTION that do
    not raise: either would hide a failure from ComfyUI's error dialog."""
    tree = ast.parse(path.read_text(), str(path))
    found = [f"{path.relative_to(root)}:{c.lineno}: print() instead of an error or the log"
             for c in calls(tree) if dotted(c.func) == "print"]
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        function = next((s.value.value for s in cls.body if isinstance(s, ast.Assign)
                         and any(isinstance(t, ast.Name) and t.id == "FUNCTION" for t in s.targets)), None)
        for method in (m for m in cls.body if isinstance(m, ast.FunctionDef) and m.name == function):
            for handler in (h for h in ast.walk(method) if isinstance(h, ast.ExceptHandler)):
                if not any(isinstance(n, ast.Raise) for n in ast.walk(handler)):
                    found.append(f"{path.relative_to(root)}:{handler.lineno}: {cls.name}.{function} swallows an error")
    return found


@pytest.mark.parametrize("path", NODE_MODULES, ids=lambda p: p.name)
def test_node_module_never_swallows_an_error(path):
    assert swallowed_errors(path) == []


def test_the_swallow_check_catches_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("class Node:\n    FUNCTION = 'run'\n    def run(self, x):\n        try:\n            return f(x)\n"
                   "        except ValueError:\n            print('failed')\n            return ([],)\n"
                   "        except KeyError:\n            raise\n")
    found = [f.split(": ", 1)[1] for f in swallowed_errors(bad, tmp_path)]
    assert found == ["print() instead of an error or the log", "Node.run swallows an error"]
