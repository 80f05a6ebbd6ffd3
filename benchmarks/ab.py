"""Two or more builds of the package, run in turns against the same floor.

    python benchmarks/ab.py [--modes threads,seq] [--threads K] [--calls N]
                            [--seq-calls N] [--rounds R] PYTHON...

Each PYTHON is an interpreter in whose environment a build of the package
is installed (for instance two virtualenvs, one with the main branch and one
with a change).  Every round runs, for each mode:

  threads  floor (b) with K threads, then each build with K threads calling
           in a loop (py_driver.py serve K, "threads N"), in alternating
           order, then floor (b) again (the default mode)
  seq      floor (a), then each build calling sequentially from one thread
           ("seq N"), in alternating order, then floor (a) again

and each build's calls/s is divided by the mean of the two floor runs around
it.  Prints each round and the median ratios, and the CPU per call of each
build's process.  `--modes seq,threads` compares both figures of the builds
in the same rounds.  Needs the floor
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

    def run(self, n, mode="threads"):
        c0 = bench.proc_cpu(self.pid)
        t0 = time.perf_counter()
        self.p.stdin.write("%s %d\n" % (mode, n))
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
    ap.add_argument("--modes", default="threads",
                    help="comma-separated: threads (K threads vs floor (b)), seq (one thread vs floor (a))")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--calls", type=int, default=60000, help="calls a run, threads mode")
    ap.add_argument("--seq-calls", type=int, default=10000, help="calls a run, seq mode")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--floor", default=os.path.join(HERE, "out", "floor"))
    ap.add_argument("python", nargs="+")
    a = ap.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    for m in modes:
        if m not in ("threads", "seq"):
            ap.error("unknown mode %r (threads, seq)" % m)
    k = a.threads
    calls = {"threads": a.calls // k * k, "seq": a.seq_calls}
    floor_label = {"threads": "floor (b) %d threads" % k, "seq": "floor (a)"}
    argv = bench._helper.command_line({})
    with open(os.path.join(HERE, "out", "floor.stderr"), "w") as err:
        floor = bench.Floor(a.floor, argv, err)
        hexp = bench.call_payload(bench.ARG).hex()

        def floor_run(mode):
            n = calls[mode]
            line = ("threads %d %d %s" % (k, n // k, hexp) if mode == "threads"
                    else "seq %d %s" % (n, hexp))
            return floor.cmd(line)["calls_per_s"]

        builds = [Build(py, k) for py in a.python]
        if len(set(a.python)) < len(a.python):   # the same interpreter twice (an A/A run)
            for i, b in enumerate(builds):
                b.name = "%d:%s" % (i + 1, b.name)
        ratios = {(m, b.name): [] for m in modes for b in builds}
        cpus = {(m, b.name): [] for m in modes for b in builds}
        try:
            for r in range(a.rounds):
                order = builds if r % 2 == 0 else builds[::-1]
                for mode in modes:
                    f1 = floor_run(mode)
                    got = {b.name: b.run(calls[mode], mode) for b in order}
                    f2 = floor_run(mode)
                    f = (f1 + f2) / 2
                    for b in builds:
                        ratios[(mode, b.name)].append(got[b.name][0] / f)
                        cpus[(mode, b.name)].append(got[b.name][1])
                    print("round %d, %s: %s %.0f/s; " % (r, mode, floor_label[mode], f)
                          + "; ".join("%s %.0f/s (%.2f x)" % (b.name, got[b.name][0], got[b.name][0] / f)
                                      for b in builds), flush=True)
        finally:
            for b in builds:
                b.close()
            floor.close()
    for mode in modes:
        print("\n%s: %s, %d calls a run, %d rounds:"
              % (mode, "%d threads" % k if mode == "threads" else "one thread", calls[mode], a.rounds))
        for b in builds:
            print("  %s: median %.3f x %s, CPU %.1f us per call (tick-sampled)"
                  % (b.name, statistics.median(ratios[(mode, b.name)]), floor_label[mode],
                     statistics.median(cpus[(mode, b.name)])))


if __name__ == "__main__":
    sys.exit(main())
