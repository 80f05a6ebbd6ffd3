"""`python -m erlang`: --version, eval and doctor, run as a user runs them."""
import os
import shutil
import subprocess
import sys
import time

import pytest

import erlang

PKG = os.path.dirname(os.path.abspath(erlang.__file__))


def cli(*args, env=None, timeout=60):
    full = dict(os.environ, PYTHONIOENCODING="utf-8")
    full.update(env or {})
    try:
        return subprocess.run([sys.executable, "-m", "erlang"] + list(args), capture_output=True,
                              text=True, encoding="utf-8", timeout=timeout, env=full)
    except subprocess.TimeoutExpired as e:
        pytest.fail("python -m erlang %s hung: %r %r" % (args, e.stdout, e.stderr))


def test_version_prints_the_package_version():
    proc = cli("--version")
    assert (proc.returncode, proc.stdout) == (0, "erlang %s\n" % erlang.__version__)


def test_without_a_command_it_prints_usage_and_fails():
    proc = cli()
    assert proc.returncode == 2 and "usage: python -m erlang" in proc.stderr


def test_help_lists_the_commands():
    proc = cli("--help")
    assert proc.returncode == 0
    for word in ("eval", "doctor", "--version"):
        assert word in proc.stdout


def test_eval_prints_the_value_as_python_shows_it():
    proc = cli("eval", "X = 20, {ok, X + 1, <<\"text\">>, [a]}")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0, "(Atom('ok'), 21, 'text', [Atom('a')])\n", "")


def test_eval_of_an_erlang_error_prints_it_on_stderr_and_fails():
    proc = cli("eval", "1 / 0.")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("Error: ") and "arithmetic expression" in proc.stderr


def test_eval_of_text_that_does_not_parse_fails():
    proc = cli("eval", "1 +")
    assert proc.returncode == 1 and "syntax error before" in proc.stderr


def test_eval_timeout_is_honoured():
    proc = cli("eval", "timer:sleep(5000).", "--timeout", "0.2")
    assert proc.returncode == 1 and proc.stderr.startswith("CallTimeout")


def test_doctor_passes_every_check_quickly():
    t0 = time.monotonic()
    proc = cli("doctor")
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    checks = [ln for ln in lines if ln[:1] in ("\u2714", "\u2718")]
    assert checks and all(ln.startswith("\u2714 ") for ln in checks), proc.stdout
    text = proc.stdout
    # The erl used: $ERL when set (the sanitizer runs set a wrapper), else PATH's.
    assert "\u2714 erl: %s" % (os.environ.get("ERL") or shutil.which("erl")) in text
    assert "\u2714 OTP %s" % erlang.info()["otp_release"] in text
    for word in ("C extension", "helper files present", "helper started in",
                 "one call round trip", "distribution works", "TLS distribution available"):
        assert word in text, word
    assert lines[-1] == "all checks passed"
    assert took < 10, took


def test_doctor_without_erl_says_how_to_get_it():
    proc = cli("doctor", env={"ERL": "/nonexistent/erl"})
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("\u2718") and "/nonexistent/erl" in ln)
    assert "erlang-base" in lines[i + 1] and "$ERL" in lines[i + 1]
    assert lines[i + 1].lstrip().startswith("fix:")
    assert lines[-1].endswith("check(s) failed")


def test_doctor_names_a_missing_helper_file(tmp_path):
    dst = tmp_path / "erlang"
    shutil.copytree(PKG, str(dst), ignore=shutil.ignore_patterns("__pycache__"))
    os.remove(str(dst / "priv" / "ebin" / "py_user.beam"))
    proc = subprocess.run([sys.executable, "-m", "erlang", "doctor"], capture_output=True,
                          text=True, encoding="utf-8", timeout=60, cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=str(tmp_path), PYTHONIOENCODING="utf-8"))
    assert proc.returncode == 1
    assert "\u2718 helper file missing: %s" % (dst / "priv" / "ebin" / "py_user.beam") in proc.stdout
    assert "pip install -e ." in proc.stdout


def test_doctor_marks_are_plain_words_on_an_ascii_terminal():
    proc = cli("doctor", env={"PYTHONIOENCODING": "ascii", "ERL": "/nonexistent/erl"})
    assert proc.returncode == 1
    assert "FAIL " in proc.stdout and "\u2718" not in proc.stdout
