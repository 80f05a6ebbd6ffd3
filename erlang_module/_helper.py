"""Starting and stopping the helper BEAM; the output pump.

The C extension owns the channel; this module decides how the helper is
started (the erl command line and environment), starts it lazily on the first
call (exactly once, however many threads call at the same moment), runs
``on_start`` after every start, forwards helper output that no call is
waiting for to ``sys.stdout``/``sys.stderr``, and stops the helper at exit.
"""
import atexit
import math
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Mapping

from . import _erlang
from ._errors import HelperExited
from . import _logging  # logger events from the helper (the output pump)

EBIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "priv", "ebin")

_ALLOWED = {
    "erl", "args", "code_path", "modules", "timeout", "call_timeout",
    "binaries", "on_start", "env", "after_fork", "elixir", "python_workers",
    "node", "cookie", "dist", "hidden", "net_ticktime", "tls",
}

_lock = threading.RLock()      # start/stop/autostart
_options = {}                  # options of the last explicit start()
_pump = None
_pump_stop = False
_forked = False                # this process is a fork of one that had a helper
_exiting = False               # the interpreter is exiting: start no helper
_starter = None                # ident of the thread running a start, if any
_info = None                   # info() of the helper last started (see info())


def _find_erl(erl):
    erl = os.fsdecode(erl) if erl else (os.environ.get("ERL") or "erl")
    path = erl if os.sep in erl else shutil.which(erl)
    if not path or not os.access(path, os.X_OK):
        raise HelperExited(
            "Erlang's `erl` was not found (looked for %r). Install Erlang/OTP "
            "(Debian/Ubuntu: apt-get install -y erlang-base), or pass "
            "erlang.start(erl='/path/to/erl'), or set $ERL." % erl
        )
    return path


def _find_elixir(elixir):
    """The ebin directories of the Elixir installation that `elixir` (True:
    the `elixir` on PATH; else the path of an `elixir` executable or of the
    installation's root) belongs to: <root>/lib/*/ebin, where <root> is the
    parent of the real bin directory (Debian: /usr/bin/elixir ->
    /usr/lib/elixir/bin/elixir, libraries in /usr/lib/elixir/lib)."""
    if elixir is True:
        path = shutil.which("elixir")
        if path is None:
            raise FileNotFoundError(
                "start option elixir=True: `elixir` was not found on PATH. Install "
                "Elixir (Debian/Ubuntu: apt-get install -y elixir), or pass "
                "erlang.start(elixir='/path/to/elixir')")
    else:
        path = os.fsdecode(elixir)
    real = os.path.realpath(path)
    root = real if os.path.isdir(real) else os.path.dirname(os.path.dirname(real))
    lib = os.path.join(root, "lib")
    try:
        names = sorted(os.listdir(lib))
    except OSError:
        names = []
    ebins = [os.path.join(lib, n, "ebin") for n in names
             if os.path.isdir(os.path.join(lib, n, "ebin"))]
    if os.path.join(lib, "elixir", "ebin") not in ebins:
        raise FileNotFoundError(
            "start option elixir=%r: no Elixir installation there (looked for %s). "
            "Install Elixir (Debian/Ubuntu: apt-get install -y elixir), or pass the "
            "path of its `elixir` executable" % (elixir, os.path.join(lib, "elixir", "ebin")))
    return ebins


def missing_helper_file():
    """The path of the first file the helper needs that is not in EBIN (its
    py.app, then each module the app lists), or None when all are there.
    An open and a few stat calls: cheap next to starting erl."""
    app = os.path.join(EBIN, "py.app")
    try:
        with open(app, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return app
    m = re.search(r"\{modules,\s*\[([^\]]*)\]", text)
    for name in (m.group(1).split(",") if m else ()):
        beam = os.path.join(EBIN, name.strip() + ".beam")
        if not os.path.isfile(beam):
            return beam
    return None


def _check_helper_files():
    """Raises HelperExited when a file of the helper is missing: erl would
    start, then die with an `undef` report that does not say why."""
    missing = missing_helper_file()
    if missing is not None:
        raise HelperExited(
            "the Erlang helper cannot start: %s is missing (the package was "
            "installed without its compiled helper). Reinstall it so that the "
            "helper is built: pip install -e . (editable, from a checkout) or "
            "pip install ." % missing
        )


def _check(options):
    unknown = set(options) - _ALLOWED
    if unknown:
        raise TypeError("unknown start option(s): %s" % ", ".join(sorted(unknown)))
    for key in ("args", "code_path", "modules"):
        v = options.get(key)
        if isinstance(v, (str, bytes)):
            raise TypeError("start option %r must be a list of strings, not a string" % key)
    code_path = options.get("code_path") or ()
    if code_path:
        try:
            own = set(os.listdir(EBIN))
        except OSError:
            own = set()
        for d in code_path:
            _check_code_dir(d, own)
    erl = options.get("erl")
    if erl is not None and not isinstance(erl, (str, bytes, os.PathLike)):
        raise TypeError("start option 'erl' must be a path, not %s" % type(erl).__name__)
    for m in options.get("modules") or ():
        if not os.path.isfile(os.fspath(m)):
            raise FileNotFoundError("start option 'modules': no such file: %r" % os.fspath(m))
    _check_env(options.get("env"))
    ct = options.get("call_timeout")
    if ct is not None and not (_is_number(ct) and ct >= 0):
        raise ValueError("call_timeout must be a number >= 0 or None")
    t = options.get("timeout", 30.0)
    if not (_is_number(t) and t > 0):
        raise ValueError("timeout must be a number > 0")
    b = options.get("binaries", "str")
    if b not in ("str", "bytes"):
        raise ValueError("binaries must be 'str' or 'bytes'")
    if options.get("on_start") is not None and not callable(options["on_start"]):
        raise TypeError("on_start must be callable")
    if options.get("after_fork", "restart") not in ("restart", "error"):
        raise ValueError("after_fork must be 'restart' or 'error'")
    ex = options.get("elixir", False)
    if not isinstance(ex, (bool, str, bytes, os.PathLike)):
        raise TypeError("start option 'elixir' must be True, False or the path of "
                        "Elixir's `elixir`, not %s" % type(ex).__name__)
    if isinstance(ex, (str, bytes)) and not ex:
        raise ValueError("start option 'elixir': empty path")
    pw = options.get("python_workers", 8)
    if isinstance(pw, bool) or not isinstance(pw, int):
        raise TypeError("start option 'python_workers' must be an int, not %s"
                        % type(pw).__name__)
    if pw < 1:
        raise ValueError("start option 'python_workers' must be >= 1")
    _check_dist(options)


# A node name's part before the @, and its host, as erl accepts them.
_NODE_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")
_NODE_HOST = re.compile(r"[A-Za-z0-9_.-]+\Z")


def node_name(node):
    """The name net_kernel is started with, and its name domain, for the
    `node` start option: "py" is a short name (py@<this host>), "py@host" a
    short name on that host, "py@host.domain" (a dot in the host) a long
    name.  Raises TypeError/ValueError for anything else."""
    if not isinstance(node, str):
        raise TypeError("start option 'node' must be a str, not %s" % type(node).__name__)
    name, at, host = node.partition("@")
    if not _NODE_NAME.match(name) or (at and not _NODE_HOST.match(host)):
        raise ValueError(
            "start option 'node': %r is not a node name: give 'name' (a short name on "
            "this host), 'name@host' or 'name@host.domain' (a long name), the name "
            "made of letters, digits, '_' and '-'" % node)
    return node, ("longnames" if "." in host else "shortnames")


def _check_dist(options):
    node = options.get("node")
    if node is not None:
        node_name(node)
        flag = _flag_in_args(options, ("-sname", "-name", "-setcookie"))
        if flag:
            raise ValueError("start option 'node' and %r in 'args' both start "
                             "distribution: give only one" % flag)
    cookie = options.get("cookie")
    if cookie is not None:
        if not isinstance(cookie, str):
            raise TypeError("start option 'cookie' must be a str, not %s"
                            % type(cookie).__name__)
        if not (0 < len(cookie) <= 255 and cookie.isascii() and cookie.isprintable()
                and not any(c.isspace() for c in cookie)):
            raise ValueError("start option 'cookie' must be 1 to 255 printable ASCII "
                             "characters without spaces")
    if options.get("dist", "loopback") not in ("loopback", "all"):
        raise ValueError("start option 'dist' must be 'loopback' or 'all'")
    if not isinstance(options.get("hidden", False), bool):
        raise TypeError("start option 'hidden' must be a bool, not %s"
                        % type(options["hidden"]).__name__)
    tick = options.get("net_ticktime")
    if tick is not None:
        if isinstance(tick, bool) or not isinstance(tick, int):
            raise TypeError("start option 'net_ticktime' must be an int (seconds) or None, "
                            "not %s" % type(tick).__name__)
        if tick < 1:
            raise ValueError("start option 'net_ticktime' must be >= 1 (seconds)")
    tls = options.get("tls")
    if tls is not None:
        if node is None:
            raise ValueError("start option 'tls' needs 'node': TLS is for distribution")
        # Checked and made absolute once: a restart uses the same files,
        # whatever the working directory is by then, without reading them.
        options["tls"] = tls_files(tls)
        flag = _flag_in_args(options, ("-proto_dist", "-ssl_dist_opt", "-ssl_dist_optfile"))
        if flag:
            raise ValueError("start option 'tls' and %r in 'args' both configure the "
                             "distribution protocol: give only one" % flag)


def _flag_in_args(options, flags):
    """The first of `flags` in the `args` start option, or None."""
    for a in options.get("args") or ():
        if os.fsdecode(a) in flags:
            return os.fsdecode(a)
    return None


# What a file of the `tls` start option must hold: its PEM block's label.
_TLS_KEYS = {"certfile": "CERTIFICATE", "keyfile": "PRIVATE KEY",
             "cacertfile": "CERTIFICATE"}


def tls_files(tls):
    """The `tls` start option checked, as {"certfile", "keyfile",
    "cacertfile"} of absolute paths (keyfile defaults to certfile, which
    then holds the key too).  Raises TypeError/ValueError for a bad option,
    FileNotFoundError/PermissionError for a file that cannot be read, and
    ValueError for one that holds no PEM block of its kind: each would
    otherwise show only when a peer connects, as a failed TLS handshake."""
    if not isinstance(tls, Mapping):
        raise TypeError("start option 'tls' must be a dict with 'certfile', 'keyfile' and "
                        "'cacertfile', not %s" % type(tls).__name__)
    unknown = sorted(map(str, set(tls) - set(_TLS_KEYS)))
    if unknown:
        raise ValueError("start option 'tls': unknown key(s) %s (known: certfile, keyfile, "
                         "cacertfile)" % ", ".join(unknown))
    for k in ("certfile", "cacertfile"):
        if k not in tls:
            raise ValueError("start option 'tls' needs %r" % k)
    files = {}
    for k in _TLS_KEYS:
        v = tls.get(k, tls["certfile"] if k == "keyfile" else None)
        if not isinstance(v, (str, bytes, os.PathLike)):
            raise TypeError("start option 'tls': %r must be a path, not %s"
                            % (k, type(v).__name__))
        path = os.path.abspath(os.fsdecode(v))
        try:
            with open(path, "rb") as f:
                text = f.read(1 << 20)
        except FileNotFoundError:
            raise FileNotFoundError("start option 'tls': %s: no such file: %r"
                                    % (k, path)) from None
        except IsADirectoryError:
            raise ValueError("start option 'tls': %s: %r is a directory" % (k, path)) from None
        except PermissionError:
            raise PermissionError("start option 'tls': %s: cannot read %r"
                                  % (k, path)) from None
        label = _TLS_KEYS[k]
        if not re.search(rb"-----BEGIN [A-Z ]*" + label.encode() + rb"-----", text):
            raise ValueError("start option 'tls': %s %r holds no PEM %s (-----BEGIN %s-----)"
                             % (k, path, label.lower(), label))
        files[k] = path
    return files


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _seconds(v):
    """A number of seconds as a float (an int too big for one: no limit)."""
    try:
        return float(v)
    except OverflowError:
        return math.inf


def _check_env(env):
    if env is None:
        return
    if not isinstance(env, Mapping):
        raise TypeError("start option 'env' must be a dict of str to str, not %s"
                        % type(env).__name__)
    for k, v in env.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError("start option 'env': names and values must be str, not %s=%s"
                            % (type(k).__name__, type(v).__name__))
        if not k or "=" in k or "\0" in k or "\0" in v:
            raise ValueError("start option 'env': bad variable %r=%r (a name must be "
                             "non-empty without '='; neither may hold NUL)" % (k, v))


def _check_code_dir(d, own):
    """A code_path directory must not hold a module of the helper's own (a
    name in `own`): it could be loaded instead of the helper's and break it."""
    try:
        names = os.listdir(os.fspath(d))
    except TypeError:
        raise TypeError("code_path entries must be paths, not %s" % type(d).__name__) from None
    except OSError:
        return          # erl ignores a missing directory; so do we
    clash = sorted(n for n in names if n.endswith(".beam") and n in own)
    if clash:
        raise ValueError(
            "code_path directory %r holds %s, named like the helper's own module(s): "
            "rename them (the helper uses py and py_* module names)"
            % (os.fspath(d), ", ".join(clash)))


def command_line(options):
    """The helper's argv for these start options."""
    # +sbwt none (and its dirty-scheduler twins): idle schedulers sleep
    # instead of spinning, leaving the CPU to the Python threads that are
    # calling; measured with benchmarks/run.sh on 2 cores: 8 threads 69k ->
    # 89k calls/s, sequential latency unchanged.
    argv = [_find_erl(options.get("erl")), "-noshell", "-noinput", "+Bi",
            "+sbwt", "none", "+sbwtdcpu", "none", "+sbwtdio", "none", "-pa", EBIN]
    elixir = options.get("elixir", False)
    if elixir is not False:
        # Elixir's libraries (elixir, logger, eex, ...) on the code path;
        # `-py elixir true` makes py_boot start the elixir application.
        for d in _find_elixir(elixir):
            argv += ["-pa", d]
        argv += ["-py", "elixir", "true"]
    for d in options.get("code_path") or ():
        argv += ["-pa", os.fspath(d)]
    if options.get("node") is not None and options.get("cookie") is not None:
        # The cookie comes over the channel (py_dist): kernel's auth must
        # then neither read ~/.erlang.cookie nor make one when distribution
        # starts, as it does without -setcookie.
        argv.append("-nocookie")
    tls = options.get("tls")
    if tls is not None:
        argv += _tls_args(tls)
    argv += [os.fspath(a) for a in options.get("args") or ()]
    # `-s` takes the plain words after it as arguments: keep it last.
    argv += ["-user", "py_user", "-s", "py_boot", "start"]
    return argv


def _tls_args(files):
    """erl flags for distribution over TLS (inet_tls_dist) with these files
    (absolute paths, as tls_files() gives them; keyfile: certfile's if absent):
    both sides of every connection present their certificate and verify the
    peer's against cacertfile; a client also checks that the certificate of
    the node it connects to names that node's host.  Only paths go in argv:
    net_kernel reads -proto_dist when distribution starts, at run time."""
    argv = ["-proto_dist", "inet_tls"]
    certfile = files["certfile"]
    opts = [("certfile", certfile), ("keyfile", files.get("keyfile", certfile)),
            ("cacertfile", files["cacertfile"]), ("verify", "verify_peer")]
    for side, extra in (("server", [("fail_if_no_peer_cert", "true")]), ("client", [])):
        argv.append("-ssl_dist_opt")
        for k, v in opts + extra:
            argv += ["%s_%s" % (side, k), v]
    return argv


def _environment_dict(options):
    env = dict(os.environ)
    # A helper that crashes must not leave erl_crash.dump in the user's
    # working directory: with 0 seconds the emulator writes no dump.
    env.setdefault("ERL_CRASH_DUMP_SECONDS", "0")
    env.update(options.get("env") or {})
    return env


def _environment(options):
    return ["%s=%s" % kv for kv in _environment_dict(options).items()]


def start(**options):
    """Starts the helper with these options (see the README)."""
    global _forked
    with _lock:
        running = _erlang.is_running()
        try:
            _check(options)
        except BaseException:
            if not running:
                _remember(options)
            raise
        if running:
            raise RuntimeError("the Erlang helper is already running; call erlang.stop() first")
        _remember(options)
        _forked = False
        _start_locked(options)


def _remember(options):
    """Keeps the options of a start() that found no helper running, even if
    it fails (in validation too): the next call tries them again and fails
    the same way, never silently the options of an earlier start.  (A start
    refused because a helper runs changes nothing.)"""
    _options.clear()
    _options.update(options)


def starting():
    """Whether another thread is starting the helper now (running its
    start-up, `modules` or `on_start`): calls wait for it to finish."""
    s = _starter
    return s is not None and s != threading.get_ident()


def _start_locked(options):
    global _starter
    _starter = threading.get_ident()
    try:
        return _start_locked_2(options)
    finally:
        _starter = None


def _start_locked_2(options):
    global _info
    _check(options)
    _check_helper_files()
    argv = command_line(options)
    ct = options.get("call_timeout")
    _info = None
    started_at, t0 = time.time(), time.monotonic()
    hello = _erlang._start(
        argv,
        _environment(options),
        _seconds(options.get("timeout", 30.0)),
        -1.0 if ct is None else _seconds(ct),
        options.get("binaries", "str"),
        options.get("elixir", False) is not False,
    )
    _info = _make_info(hello, argv[0], started_at, time.monotonic() - t0)
    _ensure_pump()
    from . import _callbacks
    _callbacks.ensure_pool(options.get("python_workers", 8))
    try:
        if options.get("node") is not None:
            from . import _dist

            _info["node"] = _dist.start_distribution(options, _environment_dict(options))
        from . import load_module

        for m in options.get("modules") or ():
            load_module(os.fspath(m))
        if options.get("on_start") is not None:
            options["on_start"]()
    except BaseException:
        _erlang._stop(2.0)
        _erlang._set_ready()
        raise
    _erlang._set_ready()
    return hello


def call_timeout():
    """The call_timeout start option in force (None: no limit)."""
    return _options.get("call_timeout")


def _make_info(hello, erl, started_at, seconds):
    """info() of a helper from its HELLO map (py_coordinator:hello/0)."""
    if not isinstance(hello, Mapping):
        hello = {}

    def text(v):
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else v

    from ._version import __version__

    return {
        "otp_release": text(hello.get("otp_release")),
        "erts_version": text(hello.get("erts_version")),
        "node": hello.get("node"),
        "os_pid": hello.get("os_pid"),
        "started_at": started_at,
        "start_seconds": seconds,
        "erl": erl,
        "protocol": hello.get("protocol"),
        "version": __version__,
    }


def info():
    """A dict about the running helper, or None when none runs (never
    starts one)."""
    current = _info
    if current is None or not _erlang.is_running():
        return None
    return dict(current)


def autostart(wait=None):
    """Starts the default helper (or the last start()'s options again after
    the helper died).  Called by the C core when a call finds no helper, or
    one that another thread is still starting; `wait` is how many seconds
    the call may wait for that thread (None: no limit).  Returns False when
    that time ran out."""
    if not _lock.acquire(timeout=-1 if wait is None else min(wait, threading.TIMEOUT_MAX)):
        return False
    try:
        if not _erlang.is_running():
            if _exiting:
                raise HelperExited("the Erlang helper was stopped: the interpreter is exiting")
            if _forked and _options.get("after_fork") == "error":
                raise HelperExited(
                    "this process is a fork of the one that started the Erlang helper, "
                    "and the helper was started with after_fork='error': call "
                    "erlang.start() in the child to give it a helper of its own"
                )
            _start_locked(dict(_options))
    finally:
        _lock.release()
    return True


def stop(timeout=5.0):
    """Stops the helper: closes its stdin, so it halts; kills it if it has
    not exited within `timeout` seconds.  Returns True if one was running."""
    if not _is_number(timeout):
        raise TypeError("timeout must be a number, not %s" % type(timeout).__name__)
    if not timeout >= 0:
        raise ValueError("timeout must be >= 0")
    with _lock:
        stopped = _erlang._stop(_seconds(timeout))
    _drain_output()
    return stopped


# ------------------------------------------------------------------ output

_LOG = _erlang.K_LOG   # a logger event, for logging (see _logging)


def write_output(stream, data):
    """Writes helper output to sys.stdout or sys.stderr (called from C for
    output of the call being waited for, and by the pump for the rest)."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    out = sys.stderr if stream == "stderr" else sys.stdout
    if out is None:
        return
    out.write(data)
    out.flush()


def _show(item):
    kind, data = item
    if kind == _erlang.K_RAW_STDERR:  # raw stderr of the helper
        write_output("stderr", data)
        return
    if kind == _LOG:  # a logger event: to Python's logging
        _logging.handle(data)
        return
    try:
        stream, text = _erlang.binary_to_term(data)
    except Exception:  # a malformed frame must not kill the pump
        return
    write_output(stream, text)


def _pump_main():
    while not _pump_stop:
        item = _erlang._next_output(0.5)
        if item is not None:
            try:
                _show(item)
            except Exception:
                pass


def _ensure_pump():
    global _pump
    if _pump is None or not _pump.is_alive():
        _pump = threading.Thread(target=_pump_main, name="erlang-output", daemon=True)
        _pump.start()


def _drain_output():
    while True:
        item = _erlang._next_output(0)
        if item is None:
            return
        try:
            _show(item)
        except Exception:
            pass


@atexit.register
def _at_exit():
    global _pump_stop, _exiting
    # Daemon threads may still call: none of them may start a helper now
    # (it would outlive the interpreter).  A start already under way in one
    # of them ends first, so that its helper is the one stopped here.
    _exiting = True
    locked = _lock.acquire(timeout=5.0)
    try:
        _erlang._stop(2.0)
    finally:
        if locked:
            _lock.release()
        _pump_stop = True
        _erlang._wake_output()
        _drain_output()


def _after_fork_in_child():
    # The C core has already forgotten the parent's helper (pthread_atfork):
    # the child's first call starts its own, unless after_fork='error'.
    global _lock, _pump, _forked
    _lock = threading.RLock()
    _pump = None
    _forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)
