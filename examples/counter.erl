%% A counter kept in an ETS table, loaded into the helper by
%% examples/module_from_file.py with erlang.load_module/1.
-module(counter).
-export([init/0, incr/1, value/0]).

%% Creates the table and registers the functions Python calls by name.
%% The table belongs to a process of its own, so it outlives the caller.
init() ->
    Owner = spawn(fun() -> receive stop -> ok end end),
    ets:new(counter, [named_table, public, {heir, none}]),
    ets:give_away(counter, Owner, none),
    ets:insert(counter, {count, 0}),
    ok = py:register_function(counter_incr, fun([N]) -> incr(N) end),
    ok = py:register_function(counter_value, fun([]) -> value() end).

%% Adds N atomically; returns the new value.
incr(N) -> ets:update_counter(counter, count, N).

value() -> ets:lookup_element(counter, count, 2).
