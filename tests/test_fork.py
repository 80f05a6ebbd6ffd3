"""fork() and descriptors: a forked child gets its own helper, the parent's
calls go on undisturbed, and no descriptor of the channel leaks into the
child's helper or into processes the user starts.

(test_lifecycle.py checks the plain case: one fork from a single-threaded
parent.  These add forks while other threads are in calls, forks from a
thread, multiprocessing, the start option after_fork='error', and the
descriptor checks.)
"""
import json

import pytest

from conftest import REGISTER_LITERAL, result_lines, run_python

COMMON = """
import json, os, stat, subprocess, sys, threading, time
import erlang
REGISTER = %s

def beam_pid():
    return int(''.join(map(chr, erlang.apply('os', 'getpid', []))))

def pipe_inodes(pid, fds=None):
    out = {}
    for fd in os.listdir('/proc/%%d/fd' %% pid):
        if fds is not None and int(fd) not in fds:
            continue
        try:
            target = os.readlink('/proc/%%d/fd/%%s' %% (pid, fd))
        except OSError:
            continue
        if target.startswith('pipe:'):
            out[int(fd)] = target
    return out

# Pipes this process had before the package made any (stdio, and whatever
# the test runner passed down).
NOT_OURS = set(pipe_inodes(os.getpid()).values())
erlang.start(on_start=lambda: erlang.eval(REGISTER))

def channel_inodes():
    # The parent's channel: the helper's stdin/stdout/stderr pipes, and
    # every other pipe the package made in this process (wake-up pipes).
    helper = erlang._erlang._helper_pid()
    return (set(pipe_inodes(helper, {0, 1, 2}).values())
            | set(pipe_inodes(os.getpid()).values())) - NOT_OURS

def child_report(w, fn):
    try:
        res = fn()
    except BaseException as e:
        res = {'error': repr(e)}
    os.write(w, json.dumps(res).encode())
    os._exit(0)

def read_all(r):
    data = b''
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            return data
        data += chunk
""" % REGISTER_LITERAL


FORK_UNDER_LOAD = COMMON + """
parent_helper = beam_pid()
ours = channel_inodes()
stop = threading.Event()
wrong, count = [], [0]

def steady(i):
    k = 0
    while not stop.is_set():
        if erlang.call('echo', (i, k)) != (i, k):
            wrong.append((i, k))
        k += 1
    count[0] += k

ts = [threading.Thread(target=steady, args=(i,)) for i in range(4)]
for t in ts:
    t.start()
time.sleep(0.2)

def in_child():
    helper = beam_pid()
    results = [erlang.call('double_it', i) for i in range(50)]
    # Threads of the child get their own workers too.
    tres = []
    th = [threading.Thread(target=lambda i=i: tres.append(erlang.call('echo', i)))
          for i in range(4)]
    for t in th: t.start()
    for t in th: t.join()
    leaked = sorted(set(pipe_inodes(erlang._erlang._helper_pid()).values()) & ours)
    return {'helper': helper, 'ok': results == [2 * i for i in range(50)],
            'threads': sorted(tres), 'leaked': leaked}

children = []
for n in range(3):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        child_report(w, in_child)
    os.close(w)
    children.append((pid, r))
    time.sleep(0.1)
reports = []
for pid, r in children:
    data = read_all(r)
    _, status = os.waitpid(pid, 0)
    reports.append({'status': status, 'report': json.loads(data)})
time.sleep(0.2)
stop.set()
for t in ts:
    t.join()
print('RESULT ' + json.dumps({'parent_helper': parent_helper, 'after': beam_pid(),
                              'wrong': len(wrong), 'count': count[0], 'children': reports}))
"""


def test_children_forked_while_threads_call_get_their_own_helper_and_no_parent_descriptor():
    proc = run_python(FORK_UNDER_LOAD, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = result_lines(proc)
    res = json.loads(line)
    assert res["wrong"] == 0 and res["count"] > 0
    assert res["after"] == res["parent_helper"]
    helpers = set()
    for c in res["children"]:
        assert c["status"] == 0, c
        rep = c["report"]
        assert "error" not in rep, rep
        assert rep["ok"] is True
        assert rep["threads"] == [0, 1, 2, 3]
        assert rep["leaked"] == [], rep     # no pipe of the parent's channel
        helpers.add(rep["helper"])
    assert len(helpers) == 3 and res["parent_helper"] not in helpers


FORK_EXITS = """
parent_helper = beam_pid()
how = sys.argv[1]
child_helpers = []
for n in range(2):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if how == 'calls':
            os.write(w, str(beam_pid()).encode())
        os.close(w)
        if how == 'os._exit':
            os._exit(0)
        sys.exit(0)              # atexit handlers of the child run
    os.close(w)
    data = read_all(r)
    if data:
        child_helpers.append(int(data))
    os.waitpid(pid, 0)

def gone(p):
    try:
        return open('/proc/%d/stat' % p).read().rsplit(')', 1)[1].split()[0] in 'ZX'
    except FileNotFoundError:
        return True

deadline = time.monotonic() + 5
while not all(gone(p) for p in child_helpers) and time.monotonic() < deadline:
    time.sleep(0.02)
print('RESULT ' + json.dumps({'same': beam_pid() == parent_helper,
                              'sum': erlang.call('double_it', 21),
                              'child_helpers_gone': all(gone(p) for p in child_helpers),
                              'n_child_helpers': len(child_helpers)}))
"""


@pytest.mark.parametrize("how", ["calls", "sys.exit", "os._exit"])
def test_a_child_that_exits_leaves_the_parents_helper_alone_and_stops_its_own(how):
    proc = run_python(COMMON + FORK_EXITS, how, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = result_lines(proc)
    res = json.loads(line)
    assert res["same"] is True
    assert res["sum"] == 42
    assert res["child_helpers_gone"] is True
    assert res["n_child_helpers"] == (2 if how == "calls" else 0)


FORK_FROM_THREAD = """
out = {}
def forker():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        child_report(w, lambda: {'v': erlang.call('echo', 'from child of a thread'),
                                 'h': beam_pid()})
    os.close(w)
    out['child'] = json.loads(read_all(r))
    out['status'] = os.waitpid(pid, 0)[1]
    out['thread_call'] = erlang.call('echo', 'thread after fork')
t = threading.Thread(target=forker)
t.start()
t.join(60)
print('RESULT ' + json.dumps(dict(out, parent=beam_pid())))
"""


def test_fork_from_a_thread_that_has_a_worker():
    proc = run_python(COMMON + "erlang.call('echo', 1)\n" + FORK_FROM_THREAD, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = result_lines(proc)
    res = json.loads(line)
    assert res["status"] == 0
    assert res["child"]["v"] == "from child of a thread"
    assert res["child"]["h"] != res["parent"]
    assert res["thread_call"] == "thread after fork"


MULTIPROCESSING = """
import multiprocessing

def work(i):
    return erlang.call('double_it', i), os.getpid()

if __name__ == '__main__':
    parent_helper = beam_pid()
    ctx = multiprocessing.get_context('fork')
    with ctx.Pool(2) as pool:
        res = pool.map(work, range(20))
    print('RESULT ' + json.dumps({'values': [r[0] for r in res],
                                  'workers': len({r[1] for r in res}),
                                  'parent': beam_pid() == parent_helper,
                                  'after': erlang.call('double_it', 50)}))
"""


def test_multiprocessing_fork_pool_workers_call_erlang():
    proc = run_python(COMMON + MULTIPROCESSING, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = result_lines(proc)
    res = json.loads(line)
    assert res["values"] == [2 * i for i in range(20)]
    assert res["parent"] is True
    assert res["after"] == 100


USER_SUBPROCESS = """
# Workers in several threads, so that there are wake-up pipes too.
th = [threading.Thread(target=erlang.call, args=('echo', i)) for i in range(4)]
for t in th: t.start()
for t in th: t.join()
erlang.call('echo', 0)
ours = channel_inodes()
fds = {}
def fds_of(argv, **kw):
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, **kw)
    time.sleep(0.3)
    try:
        return sorted(int(fd) for fd in os.listdir('/proc/%d/fd' % p.pid)), \\
            sorted(set(pipe_inodes(p.pid).values()) & ours)
    finally:
        p.kill()
        p.wait()
fds['popen-close_fds-False'] = fds_of(['sleep', '5'], close_fds=False)
fds['popen-default'] = fds_of(['sleep', '5'])
# os.system / os.posix_spawn inherit everything that is not close-on-exec.
pid = os.posix_spawn('/bin/sleep', ['sleep', '5'], os.environ)
time.sleep(0.3)
fds['posix_spawn-leaked'] = sorted(set(pipe_inodes(pid).values()) & ours)
os.kill(pid, 9); os.waitpid(pid, 0)
# Every descriptor of the channel is close-on-exec in this process.
import fcntl
not_cloexec = []
for fd, inode in pipe_inodes(os.getpid()).items():
    if inode in ours and not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
        not_cloexec.append(fd)
print('RESULT ' + json.dumps({'fds': fds, 'not_cloexec': not_cloexec, 'n_ours': len(ours)}))
"""


def test_processes_the_user_starts_never_inherit_the_channel():
    proc = run_python(COMMON + USER_SUBPROCESS, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = result_lines(proc)
    res = json.loads(line)
    assert res["n_ours"] >= 5          # helper's 3 pipes + wake-up pipes
    assert res["not_cloexec"] == []
    for name, (fds, leaked) in [(k, v) for k, v in res["fds"].items() if k.startswith("popen")]:
        assert leaked == [], name
    assert res["fds"]["popen-close_fds-False"][0] == [0, 1, 2]
    assert res["fds"]["posix_spawn-leaked"] == []


HELPER_FDS = """
helper = erlang._erlang._helper_pid()
print('RESULT ' + json.dumps({
    'pipes': pipe_inodes(helper),
    'stdio': {fd: os.readlink('/proc/%d/fd/%d' % (helper, fd)) for fd in (0, 1, 2)},
    'python_side': sorted(set(pipe_inodes(os.getpid()).values())),
}))
"""


def test_the_helper_holds_only_its_own_three_pipes_of_this_process():
    proc = run_python(COMMON + HELPER_FDS, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = result_lines(proc)
    res = json.loads(line)
    ours_in_helper = {fd: ino for fd, ino in res["pipes"].items() if ino in res["python_side"]}
    # Exactly stdin, stdout and stderr are pipes shared with Python; no
    # wake-up pipe or other descriptor of this process reached the helper.
    assert sorted(ours_in_helper) == ["0", "1", "2"], res


FORK_DURING_A_CALL = """
# Another thread is in a call when the process forks: in the child, that
# thread does not exist, and its worker must be usable by the child's threads.
th = threading.Thread(target=erlang.call, args=('sleep_ms', 1500))
th.start()
time.sleep(0.3)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    def in_child():
        out = []
        def body(i):
            try:
                out.append(erlang.apply('erlang', '+', [i, 1]))
            except BaseException as e:
                out.append(repr(e))
        ts = [threading.Thread(target=body, args=(i,)) for i in range(4)]
        for t in ts: t.start()
        for t in ts: t.join()
        return sorted(out, key=str)
    child_report(w, in_child)
os.close(w)
child = json.loads(read_all(r))
os.waitpid(pid, 0)
th.join()
print('RESULT ' + json.dumps(child))
"""


def test_threads_of_a_child_forked_while_another_thread_is_in_a_call_can_call():
    proc = run_python(COMMON + FORK_DURING_A_CALL, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = result_lines(proc)
    assert json.loads(line) == [1, 2, 3, 4]


AFTER_FORK_ERROR = """
import json, os, sys
import erlang
erlang.start(after_fork='error')
parent_helper = erlang._erlang._helper_pid()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    res = {}
    try:
        erlang.apply('erlang', '+', [1, 2])
        res['first'] = 'returned'
    except erlang.HelperExited as e:
        res['first'] = str(e)
    try:
        erlang.start()                 # the child may start its own
        res['after_start'] = erlang.apply('erlang', '+', [1, 2])
        res['child_helper'] = erlang._erlang._helper_pid()
    except BaseException as e:
        res['after_start'] = repr(e)
    os.write(w, json.dumps(res).encode())
    os._exit(0)
os.close(w)
data = b''
while True:
    chunk = os.read(r, 4096)
    if not chunk:
        break
    data += chunk
os.waitpid(pid, 0)
print('RESULT ' + json.dumps({'child': json.loads(data), 'parent_helper': parent_helper,
                              'parent_after': erlang._erlang._helper_pid(),
                              'parent_sum': erlang.apply('erlang', '+', [2, 2])}))
"""


def test_after_fork_error_gives_the_child_a_clear_error_until_it_starts_its_own():
    proc = run_python(AFTER_FORK_ERROR, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = result_lines(proc)
    res = json.loads(line)
    child = res["child"]
    assert "fork" in child["first"] and "after_fork" in child["first"], child
    assert child["after_start"] == 3
    assert child["child_helper"] != res["parent_helper"]
    assert res["parent_after"] == res["parent_helper"]
    assert res["parent_sum"] == 4
