"""Every example in examples/ runs and prints what it promises."""
import os
import re
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(name):
    path = os.path.join(EXAMPLES, name)
    if not os.path.exists(path):
        pytest.fail("missing example %s" % path)
    proc = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=60,
                          cwd=EXAMPLES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_thread_pool_example_doubles_range_10():
    out = run_example("thread_pool.py")
    assert "double_it over range(10): [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]" in out


def test_threads_example_prints_each_threads_result():
    out = run_example("threads.py")
    assert "results by thread: [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]" in out
    assert "Got: ('arg1', 2) served by Erlang process" in out


def test_chained_calls_example_returns_3():
    out = run_example("chained_calls.py")
    assert "add_one three times from 0: 3" in out
    assert "add_one 1000 times from 0: 1000" in out


def test_error_handling_example_shows_each_kind_of_error():
    out = run_example("error_handling.py")
    assert "maybe_fail(5) returned ok 5" in out
    assert "caught Error: Erlang error" in out and "too_big" in out
    assert "kind=error reason=too_big 42" in out
    assert "UndefinedFunction:" in out and "no_such_function" in out
    assert "CallTimeout:" in out
    assert "next call after the timeout: done" in out


def test_module_from_file_example_counts_to_5050():
    out = run_example("module_from_file.py")
    assert "loaded module: counter" in out
    assert "counter value: 5050" in out
    assert "via apply: 5050" in out


def test_asyncio_fanout_example_runs_1000_calls_at_once_and_cancels_one():
    out = run_example("asyncio_fanout.py")
    assert "results in order: True" in out
    assert "first ten: [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]" in out
    took = float(re.search(r"1000 calls of a 50 ms sleep took ([\d.]+) s", out).group(1))
    assert took < 25.0, out          # one after another would be 50 s
    assert "wait_for gave up after 0.2 s" in out
    assert "the cancelled call's Erlang process is gone: True" in out
    assert "CallTimeout: no reply within timeout=0.2 s" in out
    assert "gathered: [[1, 2, 3], 'Error']" in out


def test_callbacks_example_calls_python_from_erlang_both_ways():
    out = run_example("callbacks.py")
    assert "area from Erlang: 42" in out
    assert "fib(12), recursing through both sides: 144" in out
    assert "a call's own process calls back on: MainThread" in out
    assert "a spawned process calls back on: erlang-python-worker" in out
    assert "a Python exception in Erlang: ('ValueError', 'no good: 3')" in out


def test_pubsub_example_feeds_a_mailbox_read_from_asyncio():
    out = run_example("pubsub.py")
    assert "events by topic: {'alerts': 100, 'orders': 100, 'prices': 100}" in out
    assert "subscribers left: 0" in out


def test_cluster_fanout_example_spreads_200_calls_over_two_worker_nodes():
    out = run_example("cluster_fanout.py")
    counts = re.findall(r"^(fanout_w\d+_\d+@\S+): (\d+) calls$", out, re.M)
    assert len(counts) == 2, out
    assert [int(c) for _node, c in counts] == [100, 100], out
    assert re.search(r"^total: 200 calls on 2 nodes in [\d.]+ s$", out, re.M), out
    assert "worker nodes stopped: 2" in out
    # ... and stopped they are: epmd lets go of them (as soon as it sees
    # their connections close).
    import shutil
    import time
    epmd = shutil.which("epmd")
    if epmd:
        deadline = time.monotonic() + 5
        while True:
            names = subprocess.run([epmd, "-names"], capture_output=True, text=True).stdout
            left = [n for n, _c in counts if " %s " % n.split("@")[0] in names]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert not left, names
