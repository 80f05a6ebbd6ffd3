%% floor_a0: the least BEAM program that serves the package's transport.
%%
%% Floor (a0) of the benchmark suite: the same erl flags as the helper, the
%% same port on fds 0/1 with the same options as py_coordinator, the same
%% frame header and the same shape of processes (one dispatcher owning the
%% port, one handler process per worker spawned on that worker's first
%% frame, each handler writing its reply with port_command), but nothing
%% else: no application, no supervisor, no ETF decoding, no function
%% registry, no monitors.  Every request frame is answered by an OK frame
%% whose payload is the request's payload, unchanged.  A CALL_ASYNC frame
%% gets the shape of the helper's async path instead: a process of its own,
%% monitored, that exits with its reply, which the dispatcher writes when
%% the 'DOWN' arrives (and nothing else: no bookkeeping of calls in
%% flight).
%%
%% Started by bench.py as
%%   erl -noshell -noinput +Bi +sbwt none ... -pa benchmarks/out
%%       -user floor_a0 -s floor_a0 main
%% `-user floor_a0` calls start/0, which registers a `user` that owns no
%% port (kernel's default `user` would open fd 0 too and steal frames).
%% It sends a HELLO frame first, as the helper does, so that floor.c drives
%% it unchanged: its EVAL registering `echo` and its CALLs are answered with
%% OK frames carrying their Worker and Seq, which is all floor.c checks.
-module(floor_a0).

-export([start/0, main/0]).

-define(K_CALL_ASYNC, 5).
-define(K_OK, 16).
-define(K_HELLO, 18).

%% The `user` io server: answers every io request with ok, prints nothing.
-spec start() -> pid().
start() ->
    Pid = spawn(fun user_loop/0),
    true = register(user, Pid),
    Pid.

user_loop() ->
    receive
        {io_request, From, ReplyAs, _Request} ->
            From ! {io_reply, ReplyAs, ok};
        _ ->
            ok
    end,
    user_loop().

-spec main() -> ok.
main() ->
    _ = spawn(fun dispatcher/0),
    ok.

dispatcher() ->
    Port = open_port({fd, 0, 1}, [{packet, 4}, binary, eof, {busy_limits_port, disabled}]),
    true = port_command(Port, [<<?K_HELLO, 0:32, 0:32>>, term_to_binary(#{})]),
    loop(Port, #{}).

loop(Port, Handlers) ->
    receive
        {Port, {data, <<?K_CALL_ASYNC, Worker:32, Seq:32, Payload/binary>>}} ->
            %% An async call: a process of its own, which exits with its
            %% reply; the dispatcher writes it when the 'DOWN' comes, as
            %% py_coordinator does.
            _ = spawn_monitor(fun() -> exit({reply, [<<?K_OK, Worker:32, Seq:32>>, Payload]}) end),
            loop(Port, Handlers);
        {'DOWN', _, process, _, {reply, Reply}} ->
            true = port_command(Port, Reply),
            loop(Port, Handlers);
        {Port, {data, <<_Kind, Worker:32, _Seq:32, _/binary>> = Frame}} ->
            case Handlers of
                #{Worker := Handler} ->
                    Handler ! Frame,
                    loop(Port, Handlers);
                _ ->
                    Handler = spawn(fun() -> handler(Port) end),
                    Handler ! Frame,
                    loop(Port, Handlers#{Worker => Handler})
            end;
        {Port, eof} ->
            erlang:halt(0, [{flush, false}]);
        _ ->
            loop(Port, Handlers)
    end.

handler(Port) ->
    receive
        <<_Kind, Worker:32, Seq:32, Payload/binary>> ->
            true = port_command(Port, [<<?K_OK, Worker:32, Seq:32>>, Payload])
    end,
    handler(Port).
