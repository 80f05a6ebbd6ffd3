"""An Erlang pubsub process feeding a Python mailbox, read from asyncio.

    python examples/pubsub.py

An Erlang process (a tiny pubsub server, registered as `pubsub`) keeps a
list of subscribers and forwards every published event to each.  A Python
Mailbox subscribes with its pid, like any Erlang process would; Erlang
publishers (here: three spawned processes) publish; Python reads the events
with `async for` on the event loop.  The pubsub monitors its subscribers
and drops one that goes away: closing the mailbox ends its process.
"""
import asyncio
from typing import Any, Dict

import erlang

PUBSUB = r"""
-module(pubsub).
-export([start/0, loop/1]).

start() ->
    Pid = spawn(fun() -> loop([]) end),
    register(pubsub, Pid),
    Pid.

loop(Subs) ->
    receive
        {subscribe, Pid} ->
            erlang:monitor(process, Pid),
            loop([Pid | Subs]);
        {'DOWN', _, process, Pid, _} ->
            loop(lists:delete(Pid, Subs));
        {publish, Topic, Event} ->
            [S ! {event, Topic, Event} || S <- Subs],
            loop(Subs);
        {count, From} ->
            From ! {count, length(Subs)},
            loop(Subs)
    end.
"""


async def main() -> None:
    erlang.load_module(PUBSUB)
    erlang.apply("pubsub", "start", [])
    counts: Dict[str, int] = {}
    with erlang.Mailbox() as mb:
        erlang.send("pubsub", (erlang.Atom("subscribe"), mb.pid))
        # Three Erlang publishers, 100 events each, then one 'done' each.
        erlang.eval("""
            [spawn(fun() ->
                 [pubsub ! {publish, T, I} || I <- lists:seq(1, 100)],
                 pubsub ! {publish, T, done}
             end) || T <- [<<"orders">>, <<"prices">>, <<"alerts">>]], ok.
        """)
        done = 0
        async for msg in mb:
            _tag, topic, event = msg
            if event == "done":
                done += 1
                if done == 3:
                    break
            else:
                counts[topic] = counts.get(topic, 0) + 1
    print("events by topic:", dict(sorted(counts.items())))
    # The mailbox is closed: the pubsub saw its 'DOWN' and dropped it.
    await asyncio.sleep(0.1)
    reply: Any = erlang.eval("pubsub ! {count, self()}, receive {count, N} -> N end.")
    print("subscribers left:", reply)


if __name__ == "__main__":
    asyncio.run(main())
