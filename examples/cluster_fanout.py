"""Fan-out over a cluster: BEAM worker nodes on this machine, one workload.

    python examples/cluster_fanout.py                 # starts 2 worker nodes
    python examples/cluster_fanout.py --workers 4 --calls 1000
    python examples/cluster_fanout.py w1@host w2@host    # joins those (erl's cookie)
    python examples/cluster_fanout.py --cookie SECRET w1@host w2@host

The helper becomes a node (on loopback), starts N plain `erl -sname` worker
nodes with the same cookie (or joins the nodes named on the command line,
with --cookie or else erl's own cookie, ~/.erlang.cookie),
and spreads the calls over them round-robin with erlang.rpc_async: each
call runs in an Erlang process of its own in the helper, so all are in
flight at once.  It prints how many calls each node answered, and stops
the worker nodes it started (never the ones it joined).
"""
import argparse
import collections
import os
import secrets
import socket
import subprocess
import sys
import time
from concurrent.futures import Future
from typing import Any, Optional

import erlang


def start_worker(sname: str, cookie: str) -> "subprocess.Popen[bytes]":
    """A plain erl node on loopback.  Its cookie is in its argv, as with any
    `erl -setcookie`: fine for a worker that lives as long as this script
    (the helper's own cookie is never in an argv)."""
    return subprocess.Popen(
        ["erl", "-noshell", "-noinput", "-sname", sname, "-setcookie", cookie,
         "-kernel", "inet_dist_use_interface", "{127,0,0,1}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


def wait_connected(node: str, timeout: float = 30.0) -> None:
    """Connects to node, retrying while it starts (it needs a moment to
    register with epmd)."""
    deadline = time.monotonic() + timeout
    while not erlang.connect(node):
        if time.monotonic() > deadline:
            raise SystemExit("node %s did not answer within %g s" % (node, timeout))
        time.sleep(0.1)


def fan_out(nodes: list[str], calls: int) -> "collections.Counter[str]":
    """`calls` rpc_async calls of lists:sum(lists:seq(1, I)) spread over
    nodes round-robin; returns how many each node answered, and checks
    every answer."""
    futs: list[tuple[str, int, "Future[Any]"]] = []
    for i in range(calls):
        node = nodes[i % len(nodes)]
        futs.append((node, i, erlang.rpc_async(node, "lists", "sum", [list(range(1, i + 1))],
                                               timeout=30)))
    counts: collections.Counter[str] = collections.Counter()
    for node, i, fut in futs:
        if fut.result() != i * (i + 1) // 2:
            raise SystemExit("wrong answer from %s for %d: %r" % (node, i, fut.result()))
        counts[node] += 1
    return counts


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("nodes", nargs="*", help="nodes to join instead of starting workers")
    parser.add_argument("--workers", type=int, default=2, help="worker nodes to start")
    parser.add_argument("--calls", type=int, default=200, help="calls to spread")
    parser.add_argument("--cookie", help="the cluster's cookie (default, joining nodes: "
                        "erl's, ~/.erlang.cookie; starting workers: a random one)")
    args = parser.parse_args(argv)
    cookie: Optional[str] = args.cookie
    worker_cookie = cookie or secrets.token_hex(16)    # for the workers it starts
    if not args.nodes:
        cookie = worker_cookie

    erlang.start(node="fanout_%d" % os.getpid(), cookie=cookie)
    print("this node:", erlang.node())
    host = socket.gethostname().split(".")[0]
    workers: list["subprocess.Popen[bytes]"] = []
    try:
        nodes: list[str] = list(args.nodes)
        if not nodes:
            for n in range(1, args.workers + 1):
                sname = "fanout_w%d_%d" % (n, os.getpid())
                workers.append(start_worker(sname, worker_cookie))
                nodes.append("%s@%s" % (sname, host))
        for node in nodes:
            wait_connected(node)
        t0 = time.monotonic()
        counts = fan_out(nodes, args.calls)
        took = time.monotonic() - t0
        for node in nodes:
            print("%s: %d calls" % (node, counts[node]))
        print("total: %d calls on %d nodes in %.3f s" % (sum(counts.values()), len(nodes), took))
    finally:
        for proc in workers:
            proc.kill()
            proc.wait()
        erlang.stop()
    print("worker nodes stopped:", len(workers))


if __name__ == "__main__":
    main(sys.argv[1:])
