"""Load an Erlang module from a file and call it from a thread pool.

    python examples/module_from_file.py

erlang.load_module compiles counter.erl in the helper and loads it.  Its
functions are then reachable with erlang.apply(module, function, args), and
counter:init/0 registers two of them for erlang.call.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import erlang

here = os.path.dirname(os.path.abspath(__file__))
module = erlang.load_module(os.path.join(here, "counter.erl"))
print("loaded module:", module)

erlang.apply("counter", "init", [])

# 8 threads add 1..100 concurrently; ets:update_counter keeps it atomic.
with ThreadPoolExecutor(max_workers=8) as pool:
    list(pool.map(lambda n: erlang.call("counter_incr", n), range(1, 101)))

print("counter value:", erlang.call("counter_value"))             # 5050
print("via apply:", erlang.apply("counter", "value", []))         # 5050
