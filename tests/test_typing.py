"""The type stubs (erlang/__init__.pyi) say what the runtime accepts.

mypy --strict passes on examples/ and on tests/typing/check_api.py (which
uses every public name, and is run too, so the uses the stubs accept work);
mypy rejects wrong uses, so the stubs are not just Any; and every public
function's parameters in the stub are the runtime's (names, kinds).
"""
import ast
import inspect
import os
import re
import subprocess
import sys

import pytest

import erlang

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK_API = os.path.join(ROOT, "tests", "typing", "check_api.py")
STUB = os.path.join(os.path.dirname(erlang.__file__), "__init__.pyi")

pytest.importorskip("mypy")


def mypy(tmp_path, *paths):
    """Runs mypy --strict over paths (outside the checkout, so that it types
    `erlang` from the installed package and its stubs)."""
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
         "--cache-dir", str(tmp_path / "mypy-cache"), *paths],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    return proc


def test_mypy_strict_passes_on_the_examples_and_the_api_check(tmp_path):
    examples = sorted(os.path.join(ROOT, "examples", n)
                      for n in os.listdir(os.path.join(ROOT, "examples")) if n.endswith(".py"))
    assert examples
    proc = mypy(tmp_path, CHECK_API, *examples)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_api_check_runs(tmp_path):
    proc = subprocess.run([sys.executable, CHECK_API], capture_output=True, text=True,
                          timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("check_api: ok")


def test_the_api_check_uses_every_public_name():
    with open(CHECK_API) as f:
        tree = ast.parse(f.read())
    used = {n.attr for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id == "erlang"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "erlang":
            used |= {a.name for a in node.names}
    assert set(erlang.__all__) - used == set()


WRONG = """\
import os
import erlang

erlang.start(binaries="text")  # E
erlang.start(after_fork="never")  # E
erlang.start(erl=1)  # E
erlang.start(no_such_option=1)  # E
erlang.start(timeout="30")  # E
erlang.start(env={"A": 1})  # E
erlang.start(modules=[b"m.erl"])  # E
erlang.call(1)  # E
erlang.call("f", timeout="1")  # E
erlang.call(name="f")  # E
erlang.apply("lists", "reverse", "abc")  # E
erlang.apply(b"lists", "reverse", [])  # E
erlang.eval(b"1.")  # E
erlang.load_module(b"m.erl")  # E
erlang.binary_to_term("text")  # E
erlang.binary_to_term(b"", binaries="text")  # E
erlang.term_to_binary(b"", 1)  # E
pid: int = erlang.info()["os_pid"]  # E
stopped: str = erlang.stop()  # E
running: str = erlang.is_running()  # E
name: int = erlang.load_module("m.erl")  # E
data: str = erlang.term_to_binary(1)  # E
status: int = erlang.HelperExited("x").status  # E
erlang.Pid("raw")  # E
erlang.BitString(b"", "0")  # E
erlang.nonexistent_function()  # E
erlang.start(node=1)  # E
erlang.start(dist="everywhere")  # E
erlang.start(net_ticktime=1.5)  # E
erlang.start(hidden="yes")  # E
erlang.start(tls=["cert.pem"])  # E
erlang.rpc(1, "erlang", "node")  # E
erlang.connect(b"w1@host")  # E
down: int = erlang.NodeDown("w1@host").node  # E
here: int = erlang.node()  # E
"""


def test_mypy_rejects_wrong_uses(tmp_path):
    src = tmp_path / "wrong.py"
    src.write_text(WRONG)
    proc = mypy(tmp_path, str(src))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    flagged = {int(m.group(1)) for m in re.finditer(r"^[^:\n]*wrong\.py:(\d+): error", proc.stdout, re.M)}
    expected = {i for i, line in enumerate(WRONG.splitlines(), 1) if line.endswith("# E")}
    assert expected - flagged == set(), proc.stdout
    assert flagged - expected == set(), proc.stdout


def _stub_functions():
    with open(STUB) as f:
        tree = ast.parse(f.read())
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}, tree


def _stub_params(fn):
    a = fn.args
    P = inspect.Parameter
    out = [(x.arg, P.POSITIONAL_ONLY) for x in a.posonlyargs]
    out += [(x.arg, P.POSITIONAL_OR_KEYWORD) for x in a.args]
    if a.vararg:
        out.append((a.vararg.arg, P.VAR_POSITIONAL))
    out += [(x.arg, P.KEYWORD_ONLY) for x in a.kwonlyargs]
    if a.kwarg:
        out.append((a.kwarg.arg, P.VAR_KEYWORD))
    return out


def test_stub_functions_have_the_runtime_parameters():
    funcs, _ = _stub_functions()
    public = [n for n in erlang.__all__ if inspect.isroutine(getattr(erlang, n))]
    assert set(public) <= set(funcs)
    for name in public:
        runtime = [(p.name, p.kind) for p in inspect.signature(getattr(erlang, name)).parameters.values()]
        assert _stub_params(funcs[name]) == runtime, name


def test_stub_all_and_classes_match_the_runtime():
    _, tree = _stub_functions()
    stub_all = None
    classes = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            stub_all = ast.literal_eval(node.value)
        if isinstance(node, ast.ClassDef):
            classes.add(node.name)
    assert stub_all == erlang.__all__
    runtime_classes = {n for n in erlang.__all__ if isinstance(getattr(erlang, n), type)}
    assert runtime_classes <= classes


def test_stub_info_keys_are_the_runtime_keys():
    _, tree = _stub_functions()
    info_cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "_Info")
    keys = {n.target.id for n in info_cls.body if isinstance(n, ast.AnnAssign)}
    erlang.eval("1.")
    assert set(erlang.info()) == keys
