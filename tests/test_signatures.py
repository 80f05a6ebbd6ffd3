"""inspect.signature() and help() work on every public name, the C functions
included, and say what each accepts; the docstrings name the errors."""
import inspect
import pydoc

import pytest

import erlang
from erlang import _helper

P = inspect.Parameter
POS, ANY, VAR, KW = P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD, P.VAR_POSITIONAL, P.KEYWORD_ONLY
NO = P.empty

EXPECTED = {
    "call": [("name", POS, NO), ("args", VAR, NO), ("timeout", KW, None)],
    "apply": [("module", ANY, NO), ("function", ANY, NO), ("args", ANY, ()),
              ("timeout", ANY, None)],
    "eval": [("source", ANY, NO), ("timeout", ANY, None)],
    "load_module": [("path_or_source", ANY, NO), ("timeout", ANY, None)],
    "stop": [("timeout", ANY, 5.0)],
    "is_running": [],
    "info": [],
    "term_to_binary": [("obj", POS, NO)],
    "binary_to_term": [("data", POS, NO), ("binaries", ANY, "str")],
    "call_async": [("name", POS, NO), ("args", VAR, NO), ("timeout", KW, None)],
    "apply_async": [("module", ANY, NO), ("function", ANY, NO), ("args", ANY, ()),
                    ("timeout", ANY, None)],
    "map": [("name", POS, NO), ("iterables", VAR, NO), ("timeout", KW, None),
            ("in_flight", KW, 64)],
    "export": [("fn", POS, None), ("name", KW, None)],
    "unexport": [("name", ANY, NO)],
    "exported": [],
    "send": [("dest", ANY, NO), ("message", ANY, NO)],
    "whereis": [("name", ANY, NO)],
    "node": [],
    "nodes": [],
    "connect": [("node", ANY, NO)],
    "disconnect": [("node", ANY, NO)],
    "rpc": [("node", ANY, NO), ("module", ANY, NO), ("function", ANY, NO), ("args", ANY, ()),
            ("timeout", ANY, None)],
    "rpc_async": [("node", ANY, NO), ("module", ANY, NO), ("function", ANY, NO),
                  ("args", ANY, ()), ("timeout", ANY, None)],
}


def params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def public_callables():
    return [n for n in erlang.__all__ if callable(getattr(erlang, n))]


def test_every_public_callable_has_a_signature():
    for name in public_callables():
        inspect.signature(getattr(erlang, name))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_function_signature_is_what_it_accepts(name):
    assert params(getattr(erlang, name)) == EXPECTED[name]


def test_start_signature_names_every_start_option_keyword_only():
    ps = inspect.signature(erlang.start).parameters
    assert all(p.kind is KW for p in ps.values())
    assert set(ps) == _helper._ALLOWED
    assert ps["binaries"].default == "str" and ps["after_fork"].default == "restart"
    assert ps["timeout"].default == 30.0
    assert ps["node"].default is None and ps["cookie"].default is None
    assert ps["dist"].default == "loopback" and ps["hidden"].default is False
    assert ps["net_ticktime"].default is None and ps["tls"].default is None


def test_every_public_function_is_in_the_table():
    functions = {n for n in public_callables() if not isinstance(getattr(erlang, n), type)}
    assert functions == set(EXPECTED) | {"start"}


def test_c_functions_refuse_what_their_signature_refuses():
    # The signature says name/data/obj are positional-only: so does the code.
    sig = inspect.signature(erlang.call)
    with pytest.raises(TypeError):
        sig.bind(name="echo")
    with pytest.raises(TypeError):
        erlang.call(name="echo")
    with pytest.raises(TypeError):
        erlang.binary_to_term(data=b"\x83a\x01")
    with pytest.raises(TypeError):
        erlang.term_to_binary(obj=1)
    with pytest.raises(TypeError):
        erlang.is_running(1)
    # ... and accepts what it binds.
    inspect.signature(erlang.binary_to_term).bind(b"\x83a\x01", binaries="bytes")
    assert erlang.binary_to_term(b"\x83a\x01", binaries="bytes") == 1
    assert erlang.call("echo", 5, timeout=10) == 5


def test_class_signatures_match_their_constructors():
    assert [p.name for p in inspect.signature(erlang.Atom).parameters.values()] == ["object"]
    assert erlang.Atom(object="ok") == "ok"
    assert [p.kind for p in inspect.signature(erlang.CallTimeout).parameters.values()] == [VAR]
    assert params(erlang.HelperExited) == [("message", ANY, NO), ("status", ANY, None),
                                           ("stderr", ANY, "")]
    assert params(erlang.BitString) == [("data", ANY, NO), ("bits", ANY, NO)]


def test_help_of_call_shows_the_signature_arguments_errors_and_an_example():
    text = pydoc.render_doc(erlang.call, renderer=pydoc.plaintext)
    assert "call(name, /, *args, timeout=None)" in text
    for word in ("timeout", "UndefinedFunction", "CallTimeout", "HelperExited", "Error",
                 "TypeError", ">>> erlang.call("):
        assert word in text, word


ERRORS = {
    "call": ["UndefinedFunction", "Error", "CallTimeout", "HelperExited", "TypeError"],
    "apply": ["UndefinedFunction", "Error", "CallTimeout", "HelperExited", "TypeError"],
    "eval": ["Error", "syntax_error", "CallTimeout", "HelperExited", "TypeError"],
    "load_module": ["compile_error", "Error", "CallTimeout", "HelperExited", "OSError"],
    "start": ["RuntimeError", "TypeError", "ValueError", "FileNotFoundError", "HelperExited"],
    "stop": ["TypeError", "ValueError"],
    "is_running": ["raises nothing"],
    "info": ["Raises nothing"],
    "term_to_binary": ["TypeError", "ValueError", "RecursionError"],
    "binary_to_term": ["ValueError", "TypeError", "RecursionError"],
    "call_async": ["Error", "UndefinedFunction", "CallTimeout", "HelperExited", "TypeError"],
    "apply_async": ["Error", "UndefinedFunction", "CallTimeout", "HelperExited", "TypeError"],
    "map": ["Error", "CallTimeout", "HelperExited", "TypeError"],
    "node": ["nonode@nohost", "HelperExited"],
    "nodes": ["HelperExited"],
    "connect": ["TypeError", "ValueError", "HelperExited"],
    "disconnect": ["TypeError", "ValueError", "HelperExited"],
    "rpc": ["NodeDown", "Error", "CallTimeout", "HelperExited", "TypeError"],
    "rpc_async": ["NodeDown", "Error", "CallTimeout", "HelperExited", "TypeError"],
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_docstring_explains_arguments_errors_and_has_an_example(name):
    doc = inspect.getdoc(getattr(erlang, name))
    assert doc and len(doc) > 150, doc
    assert "erlang.%s(" % name in doc and ">>> " in doc
    for word in ERRORS[name]:
        assert word in doc, (name, word)
    for p in inspect.signature(getattr(erlang, name)).parameters:
        assert p in doc, (name, p)
