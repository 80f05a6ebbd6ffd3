"""``python -m erlang``: the package's command line.

    python -m erlang --version        the package's version
    python -m erlang eval "Expr."     evaluates Erlang expressions, prints the value
    python -m erlang doctor           checks that everything the package needs works
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time

import erlang
from erlang import _helper


def _eval(ns):
    try:
        value = erlang.eval(ns.expr, timeout=ns.timeout)
    except (erlang.Error, erlang.CallTimeout, erlang.HelperExited) as e:
        print("%s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 1
    finally:
        erlang.stop()
    print(repr(value))
    return 0


# ------------------------------------------------------------------ doctor

def _marks():
    """✔/✘, or plain words where the terminal cannot show them."""
    try:
        "\u2714\u2718".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "ok", "FAIL"
    return "\u2714", "\u2718"


class _Report:
    def __init__(self):
        self.ok_mark, self.bad_mark = _marks()
        self.failed = 0

    def ok(self, text):
        print("%s %s" % (self.ok_mark, text), flush=True)

    def note(self, text, fix):
        """Something only some programs need: said, not counted as failed."""
        print("- %s\n    fix: %s" % (text, fix), flush=True)

    def bad(self, text, fix):
        self.failed += 1
        print("%s %s\n    fix: %s" % (self.bad_mark, text, fix), flush=True)


def _check_distribution(erl, timeout=4.0):
    """Starts a short-lived `erl -sname` node: (True, node name) or (False,
    why).  This is what the start option args=["-sname", ...] needs: epmd
    (erl starts it if it is not running) and a resolvable host name."""
    name = "erlang_doctor_%d_%d" % (os.getpid(), random.randrange(10 ** 6))
    try:
        proc = subprocess.run(
            [erl, "-noshell", "-noinput", "-sname", name, "-eval",
             'io:format("~s", [node()]), halt().'],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, "`erl -sname` did not finish within %g s" % timeout
    except OSError as e:
        return False, "could not run %s: %s" % (erl, e)
    if proc.returncode == 0 and "@" in proc.stdout:
        return True, proc.stdout.strip()
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    return False, "`erl -sname` exited with status %d: %s" % (
        proc.returncode, lines[0] if lines else "no output")


def _doctor(ns):
    r = _Report()
    print("erlang %s, Python %s (%s)" % (erlang.__version__, sys.version.split()[0],
                                        sys.executable))

    try:
        erl = _helper._find_erl(None)
    except erlang.HelperExited as e:
        erl = None
        r.bad(str(e).split(". ")[0],
              "install Erlang/OTP (Debian/Ubuntu: apt-get install -y erlang-base), "
              "or set $ERL to the path of erl")
    else:
        r.ok("erl: %s" % erl)

    # Importing erlang imported its C extension, which is linked with ei.
    try:
        with open(os.path.join(os.path.dirname(_helper.EBIN), "build_info.json")) as f:
            ei = json.load(f)["ei_dir"]
    except (OSError, ValueError, KeyError):
        r.ok("C extension erlang._erlang imported (it is built against OTP's ei)")
    else:
        r.ok("C extension erlang._erlang built against ei from %s" % ei)

    missing = _helper.missing_helper_file()
    if missing is None:
        r.ok("helper files present in %s" % _helper.EBIN)
    else:
        r.bad("helper file missing: %s" % missing,
              "reinstall the package: pip install -e . (from a checkout) or pip install .")

    if erl is None or missing is not None:
        r.bad("helper not started (see above)", "fix the problems above first")
    else:
        _doctor_helper(r, erl)

    if r.failed:
        print("%d check(s) failed" % r.failed)
        return 1
    print("all checks passed")
    return 0


def _doctor_helper(r, erl):
    erlang.stop()
    try:
        erlang.start(timeout=10)
    except Exception as e:  # any reason the helper did not start is the report
        r.bad("helper did not start: %s" % e,
              "run `%s -noshell` by hand to see why; check $ERL and the "
              "ERL_* environment variables" % erl)
        return
    try:
        info = erlang.info() or {}
        r.ok("OTP %s (erts %s)" % (info.get("otp_release"), info.get("erts_version")))
        r.ok("helper started in %.3f s (os pid %s)"
             % (info.get("start_seconds", float("nan")), info.get("os_pid")))
        t0 = time.monotonic()
        try:
            value = erlang.eval("1 + 1.", timeout=5)
        except Exception as e:
            r.bad("one call round trip failed: %s" % e,
                  "see the message; `python -m erlang eval \"1 + 1.\"` repeats the call")
        else:
            took = time.monotonic() - t0
            if value == 2:
                r.ok("one call round trip: %.1f ms" % (took * 1e3))
            else:
                r.bad("one call round trip returned %r, not 2" % (value,),
                      "reinstall the package: pip install .")
        # Only tls= needs it, so a missing ssl is said, not counted.
        ssl = erlang.eval("case code:lib_dir(ssl) of {error, _} -> false; D -> "
                          "filename:basename(D) end.", timeout=5)
        if ssl and erlang.apply("code", "which", [erlang.Atom("inet_tls_dist")]) != \
                "non_existing":
            r.ok("TLS distribution available (%s)" % "".join(map(chr, ssl)))
        else:
            r.note("TLS distribution (start option tls=) not available: Erlang's ssl "
                   "application is missing",
                   "Debian/Ubuntu: apt-get install -y erlang-ssl")
    finally:
        erlang.stop()
    ok, what = _check_distribution(erl)
    if ok:
        r.ok("distribution works (a node %s started)" % what)
    else:
        r.bad("distribution cannot start: %s" % what,
              "start epmd (`epmd -daemon`) and make sure this host's name "
              "resolves (`hostname` in /etc/hosts); only needed for start(node=...)")


# ------------------------------------------------------------------ main

def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m erlang",
        description="Call Erlang/OTP from Python: command-line tools of the erlang package.")
    parser.add_argument("--version", action="version",
                        version="erlang %s" % erlang.__version__,
                        help="print the package's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser(
        "eval", help="evaluate Erlang expressions in a helper and print the value",
        description="Starts a helper, evaluates EXPR (e.g. \"lists:seq(1, 3).\") "
        "and prints the value as Python shows it (its repr).  An Erlang error "
        "is printed on stderr and the exit status is 1.")
    p.add_argument("expr", metavar="EXPR", help="Erlang expressions; the final dot is optional")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds the evaluation may take (default: no limit)")
    p.set_defaults(func=_eval)
    p = sub.add_parser(
        "doctor", help="check the installation: erl, OTP, the helper, a call, distribution",
        description="Checks, one line each, what the package needs; each failed "
        "check says how to fix it.  Exit status 0 when all pass, 1 otherwise.")
    p.set_defaults(func=_doctor)
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help(sys.stderr)
        return 2
    return ns.func(ns)


if __name__ == "__main__":
    sys.exit(main())
