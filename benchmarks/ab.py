"""Two or more builds of the package, run in turns against the same floor.

    python benchmarks/ab.py [--threads K] [--calls N] [--rounds R] PYTHON...

Each PYTHON is an interpreter in whose environment a build of the package
is installed (for instance two virtualenvs, one with the main branch and one
with a change).  Every round runs floor (b) with K threads, then each build
with K threads calling in a loop (py_driver.py serve K, "threads N"), in
alternating order, then floor (b) again; each build's calls/s is divided by
the mean of the two floor runs around it.  Prints each round and the median
ratios, and the CPU per call of each build's process.  Needs the floor
client: run `bash benchmarks/run.sh --quick` once first.  Run it with the
benchmark venv's python (benchmarks/.venv/bin/python), whose package gives
the helper's command line.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import bench

HERE = os.path.dirname(os.path.abspath(__file__))


class Build:
    def __init__(self, python, k):
        self.name = python
        self.p = subprocess.Popen([python, os.path.join(HERE, "py_driver.py"), "serve", str(k)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  bufsize=1)
        words = self.p.stdout.readline().split()
        if words[:1] != ["ready"]:
            raise RuntimeError("%s: py_driver.py did not start" % python)
        self.pid = int(words[1])

    def run(self, n):
        c0 = bench.proc_cpu(self.pid)
        t0 = time.perf_counter()
        self.p.stdin.write("threads %d\n" % n)
        self.p.stdin.flush()
        if self.p.stdout.readline().strip() != "done":
            raise RuntimeError("%s: py_driver.py died" % self.name)
        wall = time.perf_counter() - t0
        return n / wall, (bench.proc_cpu(self.pid) - c0) / n * 1e6

    def close(self):
        self.p.stdin.write("quit\n")
        self.p.stdin.close()
        self.p.wait(10)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--calls", type=int, default=60000)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--floor", default=os.path.join(HERE, "out", "floor"))
    ap.add_argument("python", nargs="+")
    a = ap.parse_args()
    k, n = a.threads, a.calls // a.threads * a.threads
    argv = bench._helper.command_line({})
    with open(os.path.join(HERE, "out", "floor.stderr"), "w") as err:
        floor = bench.Floor(a.floor, argv, err)
        hexp = bench.call_payload(bench.ARG).hex()
        builds = [Build(py, k) for py in a.python]
        ratios = {b.name: [] for b in builds}
        cpus = {b.name: [] for b in builds}
        try:
            for r in range(a.rounds):
                order = builds if r % 2 == 0 else builds[::-1]
                f1 = floor.cmd("threads %d %d %s" % (k, n // k, hexp))["calls_per_s"]
                got = {b.name: b.run(n) for b in order}
                f2 = floor.cmd("threads %d %d %s" % (k, n // k, hexp))["calls_per_s"]
                f = (f1 + f2) / 2
                for b in builds:
                    ratios[b.name].append(got[b.name][0] / f)
                    cpus[b.name].append(got[b.name][1])
                print("round %d: floor (b) %.0f/s; " % (r, f)
                      + "; ".join("%s %.0f/s (%.2f x)" % (b.name, got[b.name][0], got[b.name][0] / f)
                                  for b in builds), flush=True)
        finally:
            for b in builds:
                b.close()
            floor.close()
    print("\n%d threads, %d calls a run, %d rounds:" % (k, n, a.rounds))
    for b in builds:
        print("  %s: median %.3f x floor (b), CPU %.1f us per call (tick-sampled)"
              % (b.name, statistics.median(ratios[b.name]), statistics.median(cpus[b.name])))


if __name__ == "__main__":
    sys.exit(main())
