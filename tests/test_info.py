"""erlang.info(): the running helper's facts, or None when none runs."""
import os
import random
import shutil
import signal
import time

import erlang
from conftest import helper_pid, register_functions, wait_gone

KEYS = {"otp_release", "erts_version", "node", "os_pid", "started_at", "start_seconds",
        "erl", "protocol", "version"}


def test_info_describes_the_running_helper(restore_helper):
    erlang.stop()
    before = time.time()
    t0 = time.monotonic()
    erlang.start(on_start=register_functions)
    took = time.monotonic() - t0
    info = erlang.info()
    assert set(info) == KEYS
    assert info["os_pid"] == helper_pid()
    assert info["otp_release"] == "".join(map(chr, erlang.eval("erlang:system_info(otp_release).")))
    assert info["erts_version"] == "".join(map(chr, erlang.eval("erlang:system_info(version).")))
    assert info["node"] == "nonode@nohost" and isinstance(info["node"], erlang.Atom)
    assert before <= info["started_at"] <= before + took
    assert 0 < info["start_seconds"] <= took
    # $ERL when set (the sanitizer runs set a wrapper), else PATH's erl.
    assert info["erl"] == (os.environ.get("ERL") or shutil.which("erl"))
    assert info["protocol"] == 1
    assert info["version"] == erlang.__version__


def test_info_is_none_without_a_helper_and_starts_none(restore_helper):
    erlang.stop()
    assert erlang.info() is None
    assert not erlang.is_running() and helper_pid() is None


def test_info_follows_a_restart_after_the_helper_died(restore_helper):
    first = erlang.info()
    os.kill(first["os_pid"], signal.SIGKILL)
    assert wait_gone(first["os_pid"], 10) is not None
    deadline = time.monotonic() + 10
    while erlang.is_running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert erlang.info() is None
    assert erlang.call("double_it", 2) == 4       # starts a new helper
    second = erlang.info()
    assert second["os_pid"] == helper_pid() != first["os_pid"]
    assert second["started_at"] > first["started_at"]


def test_info_is_a_copy(restore_helper):
    erlang.info()["os_pid"] = -1
    assert erlang.info()["os_pid"] == helper_pid()


def test_info_text_is_str_when_binaries_decode_to_bytes(restore_helper):
    erlang.stop()
    erlang.start(binaries="bytes")
    info = erlang.info()
    assert isinstance(info["otp_release"], str) and isinstance(info["erts_version"], str)


def test_info_names_the_node_of_a_distributed_helper(restore_helper):
    name = "pyinfo%d" % random.randrange(10 ** 6)
    erlang.stop()
    erlang.start(args=["-sname", name])
    node = erlang.info()["node"]
    assert node.startswith(name + "@") and node == erlang.eval("node().")
