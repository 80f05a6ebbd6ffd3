#!/usr/bin/env escript
%% -*- erlang -*-
%%
%% Drives the helper over its real channel, without Python: compiles
%% erl_side/*.erl into a temporary ebin, starts the helper as a port with
%% the command line the Python side uses, and speaks the wire protocol.
%%
%%   escript erl_side/test/py_port_test.escript          # tests + timings
%%
%% Exits 0 when every check passed, 1 otherwise.
-mode(compile).

-include("../py_protocol.hrl").

main(_Args) ->
    ErlSide = filename:dirname(filename:dirname(filename:absname(escript:script_name()))),
    Tmp = make_tmp(),
    Ebin = filename:join(Tmp, "ebin"),
    ok = compile_helper(ErlSide, Ebin),
    Erl = os:find_executable("erl"),
    Results = run_tests(Erl, Ebin, Tmp),
    timings(Erl, Ebin),
    _ = os:cmd("rm -rf '" ++ Tmp ++ "'"),
    Failed = [Name || {Name, failed} <- Results],
    io:format("~n~b checks, ~b failed~s~n",
              [length(Results), length(Failed),
               [[" ", atom_to_list(F)] || F <- Failed]]),
    halt(case Failed of [] -> 0; _ -> 1 end).

%% ------------------------------------------------------------------ setup

make_tmp() ->
    Dir = filename:join("/tmp", "py_port_test_" ++ os:getpid()),
    ok = filelib:ensure_dir(filename:join([Dir, "ebin", "x"])),
    Dir.

compile_helper(ErlSide, Ebin) ->
    Sources = filelib:wildcard(filename:join(ErlSide, "*.erl")),
    [{ok, _} = compile:file(S, [{outdir, Ebin}, report, {i, ErlSide}]) || S <- Sources],
    {ok, _} = file:copy(filename:join(ErlSide, "py.app"), filename:join(Ebin, "py.app")),
    ok.

helper_args(Ebin) ->
    ["-noshell", "-noinput", "+Bi", "-pa", Ebin, "-user", "py_user", "-s", "py_boot", "start"].

%% The helper run through sh only to capture its stderr and its exit status
%% in files: erl itself gets exactly the pipes and flags Python gives it.
start_wrapped(Erl, Ebin, Tmp) ->
    Err = filename:join(Tmp, "stderr"),
    St = filename:join(Tmp, "status"),
    Script = "ERL_CRASH_DUMP_SECONDS=0 \"$@\" 2>'" ++ Err ++ "'; echo $? >'" ++ St ++ "'",
    Port = open_port({spawn_executable, os:find_executable("sh")},
                     [{packet, 4}, binary, exit_status,
                      {args, ["-c", Script, "sh", Erl | helper_args(Ebin)]}]),
    {Port, Err, St}.

start_direct(Erl, Ebin) ->
    open_port({spawn_executable, Erl},
              [{packet, 4}, binary, exit_status, {env, [{"ERL_CRASH_DUMP_SECONDS", "0"}]},
               {args, helper_args(Ebin)}]).

%% ------------------------------------------------------------------ frames

send(P, Kind, W, Seq, Term) ->
    true = port_command(P, [<<Kind, W:32, Seq:32>>, term_to_binary(Term)]).

recv(P) -> recv(P, 10000).

recv(P, Timeout) ->
    receive
        {P, {data, <<K, W:32, S:32, Payload/binary>>}} ->
            {K, W, S, binary_to_term(Payload)};
        {P, {data, Bad}} ->
            error({bad_frame, Bad});
        {P, {exit_status, Status}} ->
            error({helper_exited, Status})
    after Timeout ->
        timeout
    end.

%% Sends one request and returns {Outputs, {Kind, Term}}: the OUTPUT frames
%% attributed to this call, then its reply.  Frames of anything else fail.
request(P, Kind, W, Seq, Term) ->
    send(P, Kind, W, Seq, Term),
    wait_reply(P, W, Seq, []).

wait_reply(P, W, Seq, Out) ->
    case recv(P) of
        {?K_OUTPUT, W, Seq, {stdout, Text}} -> wait_reply(P, W, Seq, [Text | Out]);
        {K, W, Seq, Reply} -> {lists:reverse(Out), {K, Reply}};
        Other -> error({unexpected, Other, waiting_for, W, Seq})
    end.

reply(P, Kind, W, Seq, Term) ->
    {_, Reply} = request(P, Kind, W, Seq, Term),
    Reply.

eval(P, W, Seq, Src) -> reply(P, ?K_EVAL, W, Seq, Src).

send_raw(P, Kind, W, Seq, Payload) ->
    true = port_command(P, [<<Kind, W:32, Seq:32>>, Payload]).

%% N frames, each {Kind, Worker, Seq, Term, PayloadBytes}.
recv_sized(P, N) ->
    [receive
         {P, {data, <<K, W:32, S:32, Payload/binary>>}} ->
             {K, W, S, binary_to_term(Payload), byte_size(Payload)};
         {P, {exit_status, Status}} ->
             error({helper_exited, Status})
     after 10000 ->
         error({timeout, waiting_for, N - I + 1, frames})
     end || I <- lists:seq(1, N)].

%% N frames in no particular order (written by different processes), sorted.
recv_sorted(P, N) ->
    lists:sort([case recv(P) of timeout -> error(timeout); F -> F end || _ <- lists:seq(1, N)]).

%% Nothing arrives within Ms.
quiet(P, Ms) ->
    case recv(P, Ms) of
        timeout -> ok;
        Frame -> error({unexpected_frame, Frame})
    end.

%% ------------------------------------------------------------------ tests

run_tests(Erl, Ebin, Tmp) ->
    T0 = erlang:monotonic_time(microsecond),
    {P, ErrFile, StatusFile} = start_wrapped(Erl, Ebin, Tmp),
    {?K_HELLO, 0, 0, Hello} = recv(P),
    T1 = erlang:monotonic_time(microsecond),
    io:format("HELLO after ~.1f ms: ~p~n", [(T1 - T0) / 1000, Hello]),
    Checks =
        [{hello, fun() ->
             #{protocol := ?PY_PROTOCOL_VERSION, otp_release := <<_/binary>>,
               erts_version := <<_/binary>>, node := nonode@nohost,
               os_pid := OsPid} = Hello,
             true = is_integer(OsPid)
         end},
         {register_by_eval, fun() ->
             {?K_OK, ok} = eval(P, 1, 1, <<"py:register_function(double_it, fun([X]) -> X * 2 end).">>),
             {?K_OK, ok} = eval(P, 1, 2, <<
                 "py:register_function(raise_error, fun([R]) -> erlang:error(R) end),"
                 "py:register_function(raise_throw, fun([R]) -> erlang:throw(R) end),"
                 "py:register_function(raise_exit, fun([R]) -> erlang:exit(R) end),"
                 "py:register_function(sleeper, fun([]) -> timer:sleep(infinity) end),"
                 "py:register_function(\"say\", fun([T, V]) -> io:format(\"~ts~n\", [T]), V end),"
                 "py:register_function(<<\"lines\">>, fun([N]) -> [io:format(\"line ~b~n\", [I]) || I <- lists:seq(1, N)], N end),"
                 "py:register_function(suicide, fun([]) -> exit(self(), kill) end),"
                 "py:register_function(linked_death, fun([]) -> spawn_link(fun() -> exit(boom) end), timer:sleep(5000) end),"
                 "py:register_function(log_error, fun([]) -> logger:error(\"logged ~s\", [\"to python\"]), logged end),"
                 "py:register_function(arg_count, erlang, length)">>),
             [<<"arg_count">>, <<"double_it">> | _] = element(2, reply(P, ?K_APPLY, 1, 3, {py, registered, []}))
         end},
         {call_on_many_workers_concurrently, fun() ->
             Ws = lists:seq(2, 17),
             [send(P, ?K_CALL, W, 1000 + W, {<<"double_it">>, [W * 10]}) || W <- Ws],
             Got = lists:sort([recv(P) || _ <- Ws]),
             Got = [{?K_OK, W, 1000 + W, W * 20} || W <- Ws]
         end},
         {call_by_atom_name_and_mfa, fun() ->
             {?K_OK, 8} = reply(P, ?K_CALL, 2, 1, {double_it, [4]}),
             {?K_OK, 3} = reply(P, ?K_CALL, 2, 2, {<<"arg_count">>, [a, b, c]})
         end},
         {error_throw_exit, fun() ->
             {?K_ERROR, {error, {my, reason}, [_ | _], <<_/binary>>}} = reply(P, ?K_CALL, 3, 1, {<<"raise_error">>, [{my, reason}]}),
             {?K_ERROR, {throw, thrown, _, <<_/binary>>}} = reply(P, ?K_CALL, 3, 2, {<<"raise_throw">>, [thrown]}),
             {?K_ERROR, {exit, gone, _, <<_/binary>>}} = reply(P, ?K_CALL, 3, 3, {<<"raise_exit">>, [gone]}),
             %% the handler survives its calls' exceptions
             {?K_OK, 2} = reply(P, ?K_CALL, 3, 4, {<<"double_it">>, [1]})
         end},
         {error_stack_has_no_helper_frames, fun() ->
             {?K_ERROR, {error, badarith, Stack, <<_/binary>>}} = reply(P, ?K_EVAL, 3, 5, <<"1 + a">>),
             [] = [F || F <- Stack, lists:member(element(1, F), [py_handler])]
         end},
         {unknown_name, fun() ->
             {?K_ERROR, {error, {undefined_function, <<"no_such">>}, [], <<_/binary>>}} =
                 reply(P, ?K_CALL, 4, 1, {<<"no_such">>, [1]})
         end},
         {apply, fun() ->
             {?K_OK, [3, 2, 1]} = reply(P, ?K_APPLY, 4, 2, {lists, reverse, [[1, 2, 3]]}),
             {?K_ERROR, {error, undef, [{no_such_mod_q, f, [1], _} | _], <<_/binary>>}} =
                 reply(P, ?K_APPLY, 4, 3, {no_such_mod_q, f, [1]}),
             {?K_ERROR, {error, {bad_request, apply, oops}, _, <<_/binary>>}} = reply(P, ?K_APPLY, 4, 4, oops)
         end},
         {eval, fun() ->
             {?K_OK, 2} = eval(P, 5, 1, <<"1 + 1">>),
             {?K_OK, 2} = eval(P, 5, 2, <<"1 + 1 % a comment">>),
             {?K_OK, 3} = eval(P, 5, 3, <<"X = 1. Y = X + 1, X + Y.">>),
             {?K_OK, <<"é✓"/utf8>>} = eval(P, 5, 4, <<"<<\"é✓\"/utf8>>."/utf8>>),
             {?K_ERROR, {error, {syntax_error, <<"1: syntax error before: '.'">>}, _, <<_/binary>>}} = eval(P, 5, 5, <<"1 + .">>),
             {?K_ERROR, {error, {syntax_error, <<"1: syntax error before: ')'">>}, _, <<_/binary>>}} = eval(P, 5, 6, <<"foo(1, )">>),
             {?K_ERROR, {error, {syntax_error, _}, _, <<_/binary>>}} = eval(P, 5, 7, <<"\"unterminated">>),
             {?K_ERROR, {error, {unbound_var, 'Z'}, _, <<_/binary>>}} = eval(P, 5, 8, <<"Z + 1.">>),
             %% fresh bindings every time
             {?K_OK, 5} = eval(P, 5, 9, <<"Q = 5.">>),
             {?K_ERROR, {error, {unbound_var, 'Q'}, _, <<_/binary>>}} = eval(P, 5, 10, <<"Q.">>)
         end},
         {cancel_then_call_on_same_worker, fun() ->
             send(P, ?K_CALL, 20, 1, {<<"sleeper">>, []}),
             timer:sleep(50),
             send(P, ?K_CANCEL, 20, 1, []),
             {?K_OK, 10} = reply(P, ?K_CALL, 20, 2, {<<"double_it">>, [5]}),
             %% a CANCEL for a Seq already answered, or unknown, changes nothing
             send(P, ?K_CANCEL, 20, 1, []),
             send(P, ?K_CANCEL, 999, 1, []),
             {?K_OK, 12} = reply(P, ?K_CALL, 20, 3, {<<"double_it">>, [6]}),
             quiet(P, 200)
         end},
         {output_is_attributed_and_before_reply, fun() ->
             {[<<"hello\n">>], {?K_OK, 42}} = request(P, ?K_CALL, 30, 7, {<<"say">>, [<<"hello">>, 42]}),
             {[<<"héllo ✓ 日本\n"/utf8>>], {?K_OK, x}} =
                 request(P, ?K_CALL, 30, 8, {<<"say">>, [<<"héllo ✓ 日本"/utf8>>, x]}),
             {Lines, {?K_OK, 300}} = request(P, ?K_CALL, 31, 1, {<<"lines">>, [300]}),
             Expected = [iolist_to_binary(io_lib:format("line ~b~n", [I])) || I <- lists:seq(1, 300)],
             Expected = Lines
         end},
         {output_of_other_processes_is_worker_0, fun() ->
             {?K_OK, ok} = eval(P, 32, 1, <<"spawn(fun() -> io:format(\"later~n\") end), ok">>),
             {?K_OUTPUT, 0, 0, {stdout, <<"later\n">>}} = recv(P, 2000)
         end},
         {handler_killing_itself_gives_error, fun() ->
             {?K_ERROR, {exit, killed, []}} = reply(P, ?K_CALL, 40, 3, {<<"suicide">>, []}),
             {?K_OK, 8} = reply(P, ?K_CALL, 40, 4, {<<"double_it">>, [4]}),
             {?K_ERROR, {exit, boom, []}} = reply(P, ?K_CALL, 41, 1, {<<"linked_death">>, []}),
             {?K_OK, 2} = reply(P, ?K_CALL, 41, 2, {<<"double_it">>, [1]})
         end},
         {logger_events_are_log_frames_on_worker_0, fun() ->
             %% written by the handler before its reply
             send(P, ?K_CALL, 42, 1, {<<"log_error">>, []}),
             {?K_LOG, 0, 0, #{level := error, msg := <<"logged to python">>,
                              meta := #{pid := <<"<", _/binary>>, time := T}}} = recv(P),
             true = is_integer(T),
             {?K_OK, 42, 1, logged} = recv(P),
             quiet(P, 100)
         end},
         {garbage_to_coordinator, fun() ->
             %% The fake short frame is logged (a LOG frame, before or after
             %% the reply: the coordinator and the handler write in parallel).
             send(P, ?K_EVAL, 50, 1, <<
                 "Port = whereis(py_port), {connected, C} = erlang:port_info(Port, connected),"
                 "C ! garbage, C ! {self(), {data, <<1, 2, 3>>}},"
                 "C ! {Port, {data, <<1, 2>>}},"
                 "C ! {'DOWN', make_ref(), process, self(), fake},"
                 "C ! {'EXIT', self(), fake},"
                 "C ! {system, garbage}, "
                 "whereis(py_coordinator) =:= C">>),
             Frames = [recv(P), recv(P)],
             [{?K_OK, 50, 1, true}] = [F || {?K_OK, _, _, _} = F <- Frames],
             [#{level := warning, msg := <<"py: dropped a malformed frame of 2 bytes">>}] =
                 [E || {?K_LOG, 0, 0, E} <- Frames],
             {?K_OK, 14} = reply(P, ?K_CALL, 50, 2, {<<"double_it">>, [7]}),
             {?K_OK, 16} = reply(P, ?K_CALL, 51, 1, {<<"double_it">>, [8]})
         end},
         {unknown_names_create_no_atoms, fun() ->
             Names = [iolist_to_binary(["zz_never_an_atom_", integer_to_list(I)]) || I <- lists:seq(1, 500)],
             {?K_ERROR, _} = reply(P, ?K_CALL, 60, 1, {<<"warm_up_unknown">>, []}),
             {?K_OK, Before} = reply(P, ?K_APPLY, 60, 2, {erlang, system_info, [atom_count]}),
             [{?K_ERROR, {error, {undefined_function, N}, [], <<_/binary>>}} = reply(P, ?K_CALL, 60, 100 + I, {N, []})
              || {I, N} <- lists:zip(lists:seq(1, 500), Names)],
             {?K_OK, Before} = reply(P, ?K_APPLY, 60, 2000, {erlang, system_info, [atom_count]})
         end},
         {load_source, fun() ->
             Src = <<"-module(pt_mod).\n-export([f/1]).\n-define(K, 3).\n"
                     "f(X) -> {?MODULE, X * ?K, ?LINE}.\n">>,
             {?K_OK, pt_mod} = reply(P, ?K_APPLY, 70, 1, {py, load_source, [Src, <<"pt_mod.erl">>]}),
             {?K_OK, {pt_mod, 6, 4}} = reply(P, ?K_APPLY, 70, 2, {pt_mod, f, [2]}),
             %% reload
             Src2 = <<"-module(pt_mod).\n-export([f/1]).\nf(X) -> {v2, X}.\n">>,
             {?K_OK, pt_mod} = reply(P, ?K_APPLY, 70, 3, {py, load_source, [Src2, <<"pt_mod.erl">>]}),
             {?K_OK, {v2, 1}} = reply(P, ?K_APPLY, 70, 4, {pt_mod, f, [1]}),
             Bad = <<"-module(pt_bad).\n-export([f/0]).\nf() -> .\ng() -> ?NOPE.\n">>,
             {?K_ERROR, {error, {compile_error, Msg}, _, <<_/binary>>}} =
                 reply(P, ?K_APPLY, 70, 5, {py, load_source, [Bad, <<"dir/pt_bad.erl">>]}),
             io:format("    compile_error message: ~p~n", [Msg]),
             {match, _} = re:run(Msg, "^dir/pt_bad.erl:3: syntax error before: '.'"),
             {match, _} = re:run(Msg, "dir/pt_bad.erl:4: undefined macro 'NOPE'")
         end},
         {big_replies, fun() ->
             Ws = lists:seq(80, 83),
             [send(P, ?K_APPLY, W, 1, {binary, copy, [<<W>>, 3000000]}) || W <- Ws],
             Got = lists:sort([recv(P) || _ <- Ws]),
             Got = [{?K_OK, W, 1, binary:copy(<<W>>, 3000000)} || W <- Ws]
         end},
         {replies_never_stall, fun() ->
             %% 8 workers x 60 replies of 200 KB: with port busy limits on,
             %% OTP 25.2 could leave a reply in the port queue for good.
             {Us, N} = timer:tc(fun() -> big_load(P, 8, 60, 200000) end),
             io:format("    ~b replies of 200 KB on 8 workers: ~.1f MB/s~n",
                       [N, N * 200000 / Us])
         end},
         {output_flood_arrives_in_order, fun() ->
             {?K_OK, ok} = eval(P, 84, 1, <<"py:register_function(flood, fun([N, L]) -> "
                 "Line = lists:duplicate(L, $x), [io:format(\"~b ~s~n\", [I, Line]) || I <- lists:seq(1, N)], ok end)">>),
             {Out, {?K_OK, ok}} = request(P, ?K_CALL, 84, 2, {<<"flood">>, [5000, 1000]}),
             Expected = [iolist_to_binary([integer_to_list(I), " ", lists:duplicate(1000, $x), "\n"])
                         || I <- lists:seq(1, 5000)],
             Expected = Out
         end},
         {handler_drops_big_binaries_after_a_call, fun() ->
             %% an idle process never collects: without the handler's own
             %% garbage_collect() both 5 MB binaries would still be held
             {?K_OK, ok} = eval(P, 85, 1, <<"py:register_function(bins, fun([]) -> process_info(self(), binary) end)">>),
             {?K_OK, Big} = reply(P, ?K_APPLY, 85, 2, {binary, copy, [<<7>>, 5000000]}),
             5000000 = byte_size(Big),
             {?K_OK, {binary, Bins}} = reply(P, ?K_CALL, 85, 3, {<<"bins">>, []}),
             [] = [B || {_, Size, _} = B <- Bins, Size >= 5000000]
         end},
         {registry_api, fun() ->
             {?K_OK, ok} = eval(P, 86, 1, <<"py:register_function(\"by_string\", fun(A) -> {got, A} end)">>),
             {?K_OK, {got, [1, 2]}} = reply(P, ?K_CALL, 86, 2, {<<"by_string">>, [1, 2]}),
             {?K_OK, {got, [x]}} = eval(P, 86, 3, <<"py:call(by_string, [x])">>),
             {?K_OK, ok} = eval(P, 86, 4, <<"py:unregister_function(<<\"by_string\">>)">>),
             {?K_OK, ok} = eval(P, 86, 5, <<"py:unregister_function(never_registered)">>),
             {?K_ERROR, {error, {undefined_function, <<"by_string">>}, [], <<_/binary>>}} =
                 reply(P, ?K_CALL, 86, 6, {<<"by_string">>, []}),
             {?K_ERROR, {error, function_clause, _, <<_/binary>>}} =
                 eval(P, 86, 7, <<"py:register_function(bad_arity, fun(A, B) -> {A, B} end)">>)
         end}] ++
        callback_checks(P) ++ send_checks(P) ++ mailbox_checks(P) ++
        [{unregistering_py_port_breaks_nothing, fun() ->
             {?K_OK, true} = eval(P, 87, 1, <<"unregister(py_port)">>),
             {?K_OK, 18} = reply(P, ?K_CALL, 87, 2, {<<"double_it">>, [9]}),
             {?K_OK, 20} = reply(P, ?K_CALL, 88, 1, {<<"double_it">>, [10]}),
             {[<<"still here\n">>], {?K_OK, 1}} = request(P, ?K_CALL, 88, 2, {<<"say">>, [<<"still here">>, 1]}),
             %% CALLBACK and MESSAGE frames do not need the name either
             send(P, ?K_EVAL, 88, 3, <<"py:call_python(f, [])">>),
             {?K_CALLBACK, 88, 3, {Alias, <<"f">>, []}} = recv(P),
             send(P, ?K_CALLBACK_REPLY, 0, 0, {Alias, ok, fine}),
             {?K_OK, 88, 3, fine} = recv(P),
             {?K_OK, M} = reply(P, ?K_APPLY, 88, 4, {py, open_mailbox, [50, <<"pt_late">>]}),
             send(P, ?K_EVAL, 88, 5, <<"pt_late ! still_here">>),
             [{?K_OK, 88, 5, still_here}, {?K_MESSAGE, 0, 50, still_here}] = recv_sorted(P, 2),
             ok = close(P, 88, 6, M, 50)
         end},
         {many_calls_many_workers, fun() ->
             {Us, N} = timer:tc(fun() -> load(P, 16, 1000) end),
             io:format("    ~b calls on 16 workers: ~.1f us/call, ~b calls/s~n",
                       [N, Us / N, round(N / (Us / 1.0e6))])
         end},
         {one_worker_round_trip, fun() ->
             {?K_OK, 2} = reply(P, ?K_CALL, 91, 1, {<<"double_it">>, [1]}),
             {Us, _} = timer:tc(fun() ->
                 [begin Double = 2 * I, {?K_OK, Double} = reply(P, ?K_CALL, 91, I + 1, {<<"double_it">>, [I]}) end
                  || I <- lists:seq(1, 5000)] end),
             io:format("    sequential round trip (Erlang port on both sides): ~.1f us/call~n",
                       [Us / 5000])
         end},
         {stdin_eof_halts_at_once, fun() ->
             #{os_pid := OsPid} = Hello,
             T = erlang:monotonic_time(microsecond),
             port_close(P),
             ok = wait_gone(OsPid, 5000),
             Ms = (erlang:monotonic_time(microsecond) - T) / 1000,
             io:format("    helper gone ~.1f ms after stdin closed~n", [Ms]),
             wait_for_file_text(StatusFile, <<"0\n">>, 2000),
             true = Ms < 1000
         end},
         {stdout_carried_only_frames, fun() ->
             %% every byte read went through {packet,4} into a frame whose
             %% payload decoded; show stderr for the record
             {ok, Err} = file:read_file(ErrFile),
             io:format("    helper stderr was: ~p~n", [Err])
         end}],
    [check(Name, Fun) || {Name, Fun} <- Checks].

%% ------------------------------------------------------------------ Erlang calls Python

%% The test plays Python: it answers CALLBACK frames with CALLBACK_REPLY.
callback_checks(P) ->
    [{call_python_from_a_handler, fun() ->
         %% a handler's CALLBACK names its own call: Python runs it on the
         %% thread that waits for that call
         send(P, ?K_EVAL, 5, 101, <<"py:call_python(<<\"f\">>, [1, 2])">>),
         {?K_CALLBACK, 5, 101, {Alias, <<"f">>, [1, 2]}} = recv(P),
         true = is_reference(Alias),
         send(P, ?K_CALLBACK_REPLY, 0, 0, {Alias, ok, 3}),
         {?K_OK, 5, 101, 3} = recv(P),
         %% the alias takes one reply: a second one never reaches the caller
         send(P, ?K_EVAL, 5, 102, <<"R = py:call_python(f, []), receive M -> {R, M} after 300 -> {R, nothing} end">>),
         {?K_CALLBACK, 5, 102, {A2, <<"f">>, []}} = recv(P),
         send(P, ?K_CALLBACK_REPLY, 5, 102, {A2, ok, first}),
         send(P, ?K_CALLBACK_REPLY, 5, 102, {A2, ok, second}),
         {?K_OK, 5, 102, {first, nothing}} = recv(P)
     end},
     {call_python_nests, fun() ->
         %% "Python" runs the callback on the thread that waits for worker 5;
         %% that callback calls Erlang on worker 301, which calls back again
         send(P, ?K_EVAL, 5, 103, <<"py:call_python(outer, [])">>),
         {?K_CALLBACK, 5, 103, {Outer, <<"outer">>, []}} = recv(P),
         send(P, ?K_EVAL, 301, 1, <<"{inner, py:call_python(inner, [])}">>),
         {?K_CALLBACK, 301, 1, {Inner, <<"inner">>, []}} = recv(P),
         send(P, ?K_CALLBACK_REPLY, 0, 0, {Inner, ok, 7}),
         {?K_OK, 301, 1, {inner, 7}} = recv(P),
         send(P, ?K_CALLBACK_REPLY, 0, 0, {Outer, ok, {outer, {inner, 7}}}),
         {?K_OK, 5, 103, {outer, {inner, 7}}} = recv(P)
     end},
     {call_python_from_a_spawned_process, fun() ->
         %% not a handler: worker 0, Python's pool runs it
         send(P, ?K_EVAL, 5, 104, <<"Self = self(), spawn(fun() -> Self ! {r, py:call_python(g, [x])} end),"
                                    "receive {r, R} -> R end">>),
         {?K_CALLBACK, 0, 0, {Alias, <<"g">>, [x]}} = recv(P),
         send(P, ?K_CALLBACK_REPLY, 7, 7, {Alias, ok, {done, <<"é"/utf8>>}}),
         {?K_OK, 5, 104, {done, <<"é"/utf8>>}} = recv(P)
     end},
     {call_python_from_an_async_call, fun() ->
         %% an async call's process is no worker's handler: worker 0 too
         send(P, ?K_EVAL_ASYNC, ?ASYNC_WORKER, 9001, <<"py:call_python(a, [])">>),
         {?K_CALLBACK, 0, 0, {Alias, <<"a">>, []}} = recv(P),
         send(P, ?K_CALLBACK_REPLY, 0, 0, {Alias, ok, async_ok}),
         {?K_OK, ?ASYNC_WORKER, 9001, async_ok} = recv(P)
     end},
     {call_python_errors, fun() ->
         Catch = <<"try py:call_python(h, [1]) catch error:R -> {caught, R} end">>,
         PyErr = {python, <<"ValueError">>, <<"bad value">>, <<"Traceback (most recent call last): ...">>},
         send(P, ?K_EVAL, 5, 105, Catch),
         {?K_CALLBACK, 5, 105, {A1, <<"h">>, [1]}} = recv(P),
         send(P, ?K_CALLBACK_REPLY, 0, 0, {A1, error, PyErr}),
         {?K_OK, 5, 105, {caught, PyErr}} = recv(P),
         %% the name as the caller gave it: an atom stays an atom
         send(P, ?K_EVAL, 5, 106, Catch),
         {?K_CALLBACK, 5, 106, {A2, <<"h">>, [1]}} = recv(P),
         send(P, ?K_CALLBACK_REPLY, 0, 0, {A2, error, {undefined_python_function, <<"h">>}}),
         {?K_OK, 5, 106, {caught, {undefined_python_function, h}}} = recv(P),
         %% a binary stays a binary; uncaught, it is the call's ERROR
         send(P, ?K_EVAL, 5, 107, <<"py:call_python(<<\"h\">>, [])">>),
         {?K_CALLBACK, 5, 107, {A3, <<"h">>, []}} = recv(P),
         send(P, ?K_CALLBACK_REPLY, 0, 0, {A3, error, {undefined_python_function, <<"h">>}}),
         {?K_ERROR, 5, 107, {error, {undefined_python_function, <<"h">>}, _, <<_/binary>>}} = recv(P),
         send(P, ?K_EVAL, 5, 108, <<"py:call_python(h, [])">>),
         {?K_CALLBACK, 5, 108, {A4, <<"h">>, []}} = recv(P),
         send(P, ?K_CALLBACK_REPLY, 0, 0, {A4, error, PyErr}),
         {?K_ERROR, 5, 108, {error, PyErr, _, <<_/binary>>}} = recv(P)
     end},
     {call_python_timeout, fun() ->
         %% the reply that comes after the timeout is dropped, not left in
         %% the caller's mailbox
         send(P, ?K_EVAL, 5, 109, <<"E = try py:call_python(slow, [], 100) catch error:X -> X end,"
                                    "receive M -> {E, M} after 400 -> {E, nothing} end">>),
         {?K_CALLBACK, 5, 109, {Alias, <<"slow">>, []}} = recv(P),
         timer:sleep(200),
         send(P, ?K_CALLBACK_REPLY, 0, 0, {Alias, ok, too_late}),
         {?K_OK, 5, 109, {{python_timeout, slow}, nothing}} = recv(P),
         %% 0 sends the CALLBACK and gives up at once
         send(P, ?K_EVAL, 5, 110, <<"catch py:call_python(<<\"z\">>, [], 0)">>),
         {?K_CALLBACK, 5, 110, {_, <<"z">>, []}} = recv(P),
         {?K_OK, 5, 110, {'EXIT', {{python_timeout, <<"z">>}, _}}} = recv(P)
     end},
     {cast_python, fun() ->
         %% always worker 0, no alias; written before the caller goes on
         send(P, ?K_EVAL, 5, 111, <<"py:cast_python(<<\"c\">>, [1, two])">>),
         {?K_CALLBACK, 0, 0, {undefined, <<"c">>, [1, two]}} = recv(P),
         {?K_OK, 5, 111, ok} = recv(P),
         send(P, ?K_EVAL, 5, 112, <<"spawn(fun() -> py:cast_python(c2, []) end), ok">>),
         [{?K_OK, 5, 112, ok}, {?K_CALLBACK, 0, 0, {undefined, <<"c2">>, []}}] = recv_sorted(P, 2)
     end},
     {call_python_bad_arguments, fun() ->
         {?K_OK, Got} = eval(P, 5, 113, <<
             "[catch py:call_python(1, []), catch py:call_python(f, [a | b]),"
             " catch py:call_python(\"f\", [], 10), catch py:call_python(f, [], -1),"
             " catch py:call_python(f, [], 1.5), catch py:call_python(f, x, infinity),"
             " catch py:cast_python({f}, []), catch py:cast_python(f, [a | b])]">>),
         [{'EXIT', {badarg, [{py, call_python, [1, [], infinity], _} | _]}},
          {'EXIT', {badarg, [{py, call_python, [f, [a | b], infinity], _} | _]}},
          {'EXIT', {badarg, [{py, call_python, ["f", [], 10], _} | _]}},
          {'EXIT', {badarg, [{py, call_python, [f, [], -1], _} | _]}},
          {'EXIT', {badarg, [{py, call_python, [f, [], 1.5], _} | _]}},
          {'EXIT', {badarg, [{py, call_python, [f, x, infinity], _} | _]}},
          {'EXIT', {badarg, [{py, cast_python, [{f}, []], _} | _]}},
          {'EXIT', {badarg, [{py, cast_python, [f, [a | b]], _} | _]}}] = Got,
         quiet(P, 100)
     end},
     {call_python_without_the_port, fun() ->
         {?K_OK, [{'EXIT', {{python_unavailable, f}, _}}, {'EXIT', {{python_unavailable, <<"g">>}, _}}]} =
             eval(P, 5, 114, <<"Port = persistent_term:get({py, port}), persistent_term:erase({py, port}),"
                               "R = [catch py:call_python(f, []), catch py:cast_python(<<\"g\">>, [])],"
                               "persistent_term:put({py, port}, Port), R">>),
         quiet(P, 100)
     end},
     {bad_callback_reply_frames, fun() ->
         %% logged and dropped; the coordinator goes on
         send_raw(P, ?K_CALLBACK_REPLY, 0, 0, <<1, 2, 3>>),
         send(P, ?K_CALLBACK_REPLY, 0, 0, oops),
         send(P, ?K_CALLBACK_REPLY, 0, 0, {make_ref(), maybe, 1}),
         %% not a reference: dropped silently
         send(P, ?K_CALLBACK_REPLY, 0, 0, {undefined, ok, 1}),
         Logs = [recv(P), recv(P), recv(P)],
         3 = length([E || {?K_LOG, 0, 0, #{level := warning,
                                          msg := <<"py: dropped a CALLBACK_REPLY frame", _/binary>>} = E} <- Logs]),
         quiet(P, 100),
         {?K_OK, 2} = reply(P, ?K_CALL, 5, 115, {<<"double_it">>, [1]})
     end}].

%% ------------------------------------------------------------------ SEND

send_checks(P) ->
    [{send_to_pids_and_names, fun() ->
         {?K_OK, Sink} = eval(P, 302, 1, <<
             "Loop = fun L(Acc) -> receive {dump, From} -> From ! {dump, lists:reverse(Acc)}, L(Acc);"
             "                              M -> L([M | Acc]) end end,"
             "Pid = spawn(fun() -> Loop([]) end), register(pt_sink, Pid), Pid">>),
         send(P, ?K_SEND, 0, 0, {Sink, m1}),
         {?K_OK, ok} = reply(P, ?K_SEND, 303, 1, {Sink, m2}),
         {?K_OK, ok} = reply(P, ?K_SEND, 303, 2, {<<"pt_sink">>, m3}),
         {?K_OK, ok} = reply(P, ?K_SEND, 303, 3, {{pt_sink, nonode@nohost}, m4}),
         {?K_OK, ok} = reply(P, ?K_SEND, 303, 4, {{<<"pt_sink">>, <<"nonode@nohost">>}, m5}),
         send(P, ?K_SEND, 0, 0, {<<"pt_sink">>, {m6, <<"é"/utf8>>, [1.5]}}),
         {?K_OK, ok} = reply(P, ?K_SEND, 303, 5, {{pt_sink, 'elsewhere@nohost'}, m7}),
         {?K_OK, [m1, m2, m3, m4, m5, {m6, <<"é"/utf8>>, [1.5]}]} =
             eval(P, 302, 2, <<"pt_sink ! {dump, self()}, receive {dump, L} -> L end">>),
         quiet(P, 100)
     end},
     {send_to_a_dead_pid, fun() ->
         {?K_OK, Dead} = eval(P, 302, 3, <<"{Pid, Ref} = spawn_monitor(fun() -> ok end),"
                                          "receive {'DOWN', Ref, _, _, _} -> Pid end">>),
         {?K_OK, ok} = reply(P, ?K_SEND, 303, 6, {Dead, hello}),
         send(P, ?K_SEND, 0, 0, {Dead, hello}),
         quiet(P, 100)
     end},
     {send_to_missing_names, fun() ->
         Name = random_name(),
         NoAtom = fun(Seq) ->
                      {?K_ERROR, {error, badarg, [{erlang, binary_to_existing_atom, _, _} | _], <<_/binary>>}} =
                          reply(P, ?K_APPLY, 303, Seq, {erlang, binary_to_existing_atom, [Name, utf8]})
                  end,
         NoAtom(7),
         Expected = <<"bad argument: no process is registered as ", Name/binary>>,
         {?K_ERROR, {error, badarg, [], Expected}} = reply(P, ?K_SEND, 303, 8, {Name, hi}),
         send(P, ?K_SEND, 0, 0, {Name, hi}),
         quiet(P, 100),
         NoAtom(9),
         %% an atom, but no process registered under it
         {?K_ERROR, {error, badarg, [], <<"bad argument: no process is registered as lists">>}} =
             reply(P, ?K_SEND, 303, 10, {<<"lists">>, hi}),
         %% a port registered under it: never sent to (it would kill the channel)
         {?K_ERROR, {error, badarg, [], <<"bad argument: no process is registered as py_port">>}} =
             reply(P, ?K_SEND, 303, 11, {<<"py_port">>, hi}),
         {?K_OK, ok} = reply(P, ?K_SEND, 303, 12, {{py_port, nonode@nohost}, hi}),
         {?K_OK, ok} = reply(P, ?K_SEND, 303, 13, {{<<"py_port">>, nonode@nohost}, hi}),
         {?K_OK, 4} = reply(P, ?K_CALL, 303, 14, {<<"double_it">>, [2]})
     end},
     {send_bad_destinations, fun() ->
         {?K_ERROR, {error, badarg, [], <<"bad argument: not a pid, a name or {Name, Node}: 42">>}} =
             reply(P, ?K_SEND, 303, 20, {42, hi}),
         {?K_ERROR, {error, badarg, [], <<"bad argument: not a pid, a name or {Name, Node}: pt_atom">>}} =
             reply(P, ?K_SEND, 303, 21, {pt_atom, hi}),
         {?K_ERROR, {error, badarg, [], <<"bad argument: not a name and node: ", _/binary>>}} =
             reply(P, ?K_SEND, 303, 22, {{<<255>>, node}, hi}),
         {?K_ERROR, {error, badarg, [], <<"bad argument: the SEND payload is not {Dest, Msg}">>}} =
             reply(P, ?K_SEND, 303, 23, not_a_pair),
         send_raw(P, ?K_SEND, 303, 24, <<1, 2, 3>>),
         {?K_ERROR, 303, 24, {error, badarg, [], <<"bad argument: the SEND payload does not decode">>}} = recv(P),
         %% on worker 0 nothing comes back, even for these
         send(P, ?K_SEND, 0, 0, {42, hi}),
         send_raw(P, ?K_SEND, 0, 0, <<1, 2, 3>>),
         quiet(P, 100)
     end}].

%% ------------------------------------------------------------------ mailboxes

mailbox_checks(P) ->
    [{mailbox_flow_control, fun() ->
         {?K_OK, M} = reply(P, ?K_APPLY, 304, 1, {py, open_mailbox, [1, undefined]}),
         true = is_pid(M),
         {?K_OK, true} = reply(P, ?K_APPLY, 304, 2, {erlang, register, [pt_flow, M]}),
         send(P, ?K_EVAL, 304, 3, <<"[pt_flow ! {m, I} || I <- lists:seq(1, 3000)], ok">>),
         {[{?K_OK, 304, 3, ok, _}], First} = lists:partition(fun(F) -> element(1, F) =:= ?K_OK end,
                                                             recv_sized(P, 1025)),
         %% exactly the window, in order, then nothing until credit comes
         Seq = fun(From, To) -> [{?K_MESSAGE, 0, 1, {m, I}} || I <- lists:seq(From, To)] end,
         {1, 1024, Want1} = {1, 1024, Seq(1, 1024)},
         Want1 = [{K, W, S, T} || {K, W, S, T, _} <- First],
         quiet(P, 300),
         {Credited, _} = lists:split(512, First),
         send(P, ?K_CREDIT, 0, 1, {512, bytes(Credited)}),
         Second = recv_sized(P, 512),
         {1025, 1536, Want1025} = {1025, 1536, Seq(1025, 1536)},
         Want1025 = [{K, W, S, T} || {K, W, S, T, _} <- Second],
         quiet(P, 300),
         %% credit for an unknown mailbox changes nothing
         send(P, ?K_CREDIT, 0, 999999, {1024, 1000000}),
         quiet(P, 100),
         %% the rest, one window at a time
         {_, Outstanding} = lists:split(512, First),
         Third = recv_after_credit(P, 1, Outstanding ++ Second, 1024),
         {1537, 2560, Want1537} = {1537, 2560, Seq(1537, 2560)},
         Want1537 = [{K, W, S, T} || {K, W, S, T, _} <- Third],
         Fourth = recv_after_credit(P, 1, Third, 440),
         {2561, 3000, Want2561} = {2561, 3000, Seq(2561, 3000)},
         Want2561 = [{K, W, S, T} || {K, W, S, T, _} <- Fourth],
         quiet(P, 200),
         %% with the window open a message goes out at once
         send(P, ?K_EVAL, 304, 4, <<"pt_flow ! last">>),
         [{?K_OK, 304, 4, last}, {?K_MESSAGE, 0, 1, last}] = recv_sorted(P, 2),
         ok = close(P, 304, 5, M, 1)
     end},
     {mailbox_byte_window, fun() ->
         MiB = 1024 * 1024,
         {?K_OK, M} = reply(P, ?K_APPLY, 304, 10, {py, open_mailbox, [6, <<"pt_bytes">>]}),
         send(P, ?K_EVAL, 304, 11, <<"B = binary:copy(<<1>>, 1048576), [pt_bytes ! {I, B} || I <- lists:seq(1, 70)], ok">>),
         {[_Ok], First} = lists:partition(fun(F) -> element(1, F) =:= ?K_OK end, recv_sized(P, 65)),
         %% 64 frames of just over 1 MiB: the 64th is sent (63 MiB and a bit
         %% are outstanding), then the window is full
         Is = lists:seq(1, 64),
         Is = [I || {?K_MESSAGE, 0, 6, {I, <<1, _/binary>>}, _} <- First],
         quiet(P, 300),
         [One | _] = First,
         [{?K_MESSAGE, 0, 6, {65, _}, _}] = Second = recv_after_credit(P, 6, [One], 1),
         quiet(P, 200),
         Rest = recv_after_credit(P, 6, tl(First) ++ Second, 5),
         [66, 67, 68, 69, 70] = [I || {?K_MESSAGE, 0, 6, {I, _}, _} <- Rest],
         ok = credit(P, 6, Rest),
         %% nothing outstanding: one message bigger than the window still
         %% goes, and the next one waits for its credit
         send(P, ?K_EVAL, 304, 12, <<"pt_bytes ! {big, binary:copy(<<2>>, 65 * 1048576)}, pt_bytes ! small, ok">>),
         {[_], [{?K_MESSAGE, 0, 6, {big, Big}, _} = BigFrame]} =
             lists:partition(fun(F) -> element(1, F) =:= ?K_OK end, recv_sized(P, 2)),
         true = byte_size(Big) =:= 65 * MiB,
         quiet(P, 300),
         [{?K_MESSAGE, 0, 6, small, _}] = recv_after_credit(P, 6, [BigFrame], 1),
         ok = close(P, 304, 13, M, 6)
     end},
     {mailbox_named, fun() ->
         {?K_OK, M} = reply(P, ?K_APPLY, 305, 1, {py, open_mailbox, [2, <<"pt_named">>]}),
         {?K_OK, M} = reply(P, ?K_APPLY, 305, 2, {py, whereis, [<<"pt_named">>]}),
         send(P, ?K_EVAL, 305, 3, <<"pt_named ! {hi, self()}, ok">>),
         [{?K_OK, 305, 3, ok}, {?K_MESSAGE, 0, 2, {hi, Handler}}] = recv_sorted(P, 2),
         true = is_pid(Handler),
         %% a taken name, or an Id in use: badarg, and the process that was
         %% to have it is gone without a MAILBOX_DOWN
         {?K_ERROR, {error, badarg, _, _}} = reply(P, ?K_APPLY, 305, 4, {py, open_mailbox, [3, <<"pt_named">>]}),
         {?K_ERROR, {error, badarg, _, _}} = reply(P, ?K_APPLY, 305, 5, {py, open_mailbox, [3, <<"py_coordinator">>]}),
         {?K_ERROR, {error, badarg, _, _}} = reply(P, ?K_APPLY, 305, 6, {py, open_mailbox, [2, undefined]}),
         {?K_ERROR, {error, badarg, _, _}} = reply(P, ?K_APPLY, 305, 7, {py, open_mailbox, [0, undefined]}),
         {?K_ERROR, {error, badarg, _, _}} = reply(P, ?K_APPLY, 305, 8, {py, open_mailbox, [3, "pt_list"]}),
         {?K_ERROR, {error, badarg, _, _}} = reply(P, ?K_APPLY, 305, 9, {py, open_mailbox, [3, <<"undefined">>]}),
         quiet(P, 200),
         %% the Id of the failed opens is free
         {?K_OK, M3} = reply(P, ?K_APPLY, 305, 10, {py, open_mailbox, [3, undefined]}),
         ok = close(P, 305, 11, M3, 3)
     end},
     {mailbox_close_and_kill, fun() ->
         {?K_OK, M} = reply(P, ?K_APPLY, 306, 1, {py, whereis, [<<"pt_named">>]}),
         send(P, ?K_APPLY, 306, 2, {py, close_mailbox, [M]}),
         [{?K_OK, 306, 2, ok}, {?K_MAILBOX_DOWN, 0, 2, closed}] = recv_sorted(P, 2),
         %% closing again is fine; the name is free; requests say noproc
         {?K_OK, ok} = reply(P, ?K_APPLY, 306, 3, {py, close_mailbox, [M]}),
         {?K_OK, undefined} = reply(P, ?K_APPLY, 306, 4, {py, whereis, [<<"pt_named">>]}),
         {?K_ERROR, {error, noproc, _, _}} = reply(P, ?K_APPLY, 306, 5, {py, mailbox_monitor, [M, <<"x">>]}),
         {?K_ERROR, {error, noproc, _, _}} = reply(P, ?K_APPLY, 306, 6, {py, mailbox_demonitor, [M, make_ref()]}),
         %% a process that is no mailbox is left alone
         {?K_OK, C} = reply(P, ?K_APPLY, 306, 7, {erlang, whereis, [py_coordinator]}),
         {?K_ERROR, {error, badarg, _, _}} = reply(P, ?K_APPLY, 306, 8, {py, close_mailbox, [C]}),
         {?K_ERROR, {error, badarg, _, _}} = reply(P, ?K_APPLY, 306, 9, {py, mailbox_monitor, [C, C]}),
         %% killed, or crashed: the reason it died of
         {?K_OK, M4} = reply(P, ?K_APPLY, 306, 10, {py, open_mailbox, [4, undefined]}),
         send(P, ?K_APPLY, 306, 11, {erlang, exit, [M4, kill]}),
         [{?K_OK, 306, 11, true}, {?K_MAILBOX_DOWN, 0, 4, killed}] = recv_sorted(P, 2),
         {?K_OK, M7} = reply(P, ?K_APPLY, 306, 12, {py, open_mailbox, [7, undefined]}),
         send(P, ?K_APPLY, 306, 13, {erlang, exit, [M7, {shutdown, <<"boom">>}]}),
         [{?K_OK, 306, 13, true}, {?K_MAILBOX_DOWN, 0, 7, {shutdown, <<"boom">>}}] = recv_sorted(P, 2),
         %% credit for a mailbox that is gone is ignored
         send(P, ?K_CREDIT, 0, 7, {1, 1}),
         quiet(P, 100)
     end},
     {mailbox_monitor, fun() ->
         {?K_OK, M} = reply(P, ?K_APPLY, 307, 1, {py, open_mailbox, [5, <<"pt_mon">>]}),
         {?K_OK, V} = eval(P, 307, 2, <<"V = spawn(fun() -> receive stop -> exit(bye) end end),"
                                        "register(pt_victim, V), V">>),
         {?K_OK, R1} = reply(P, ?K_APPLY, 307, 3, {py, mailbox_monitor, [M, <<"pt_victim">>]}),
         {?K_OK, R2} = reply(P, ?K_APPLY, 307, 4, {py, mailbox_monitor, [M, V]}),
         {?K_OK, R3} = reply(P, ?K_APPLY, 307, 5, {py, mailbox_monitor, [M, pt_victim]}),
         {?K_OK, R4} = reply(P, ?K_APPLY, 307, 6, {py, mailbox_monitor, [M, {<<"pt_victim">>, <<"nonode@nohost">>}]}),
         {?K_OK, R5} = reply(P, ?K_APPLY, 307, 7, {py, mailbox_monitor, [M, V]}),
         {?K_OK, ok} = reply(P, ?K_APPLY, 307, 8, {py, mailbox_demonitor, [M, R5]}),
         true = lists:all(fun is_reference/1, [R1, R2, R3, R4, R5]),
         send(P, ?K_EVAL, 307, 9, <<"pt_victim ! stop">>),
         Frames = recv_sorted(P, 5),
         ByName = {pt_victim, nonode@nohost},
         [{?K_OK, 307, 9, stop} | Downs] = Frames,
         Expected = lists:sort([{?K_MESSAGE, 0, 5, {'DOWN', R, process, Object, bye}}
                                || {R, Object} <- [{R1, ByName}, {R2, V}, {R3, ByName}, {R4, ByName}]]),
         Expected = Downs,
         quiet(P, 200),
         %% a binary that is no atom: noproc at once, and still no atom
         Name = random_name(),
         %% (the mailbox may write the 'DOWN' before the handler's reply)
         send(P, ?K_APPLY, 307, 10, {py, mailbox_monitor, [M, Name]}),
         [{?K_OK, 307, 10, R6}, {?K_MESSAGE, 0, 5, {'DOWN', R6, process, {Name, nonode@nohost}, noproc}}] =
             recv_sorted(P, 2),
         {?K_ERROR, {error, badarg, _, _}} = reply(P, ?K_APPLY, 307, 11, {erlang, binary_to_existing_atom, [Name, utf8]}),
         %% an atom no process is registered under
         send(P, ?K_APPLY, 307, 12, {py, mailbox_monitor, [M, <<"lists">>]}),
         [{?K_OK, 307, 12, R7}, {?K_MESSAGE, 0, 5, {'DOWN', R7, process, {lists, nonode@nohost}, noproc}}] =
             recv_sorted(P, 2),
         {?K_ERROR, {error, badarg, _, _}} = reply(P, ?K_APPLY, 307, 13, {py, mailbox_monitor, [M, 42]}),
         {?K_ERROR, {error, badarg, _, _}} = reply(P, ?K_APPLY, 307, 14, {py, mailbox_demonitor, [M, 42]}),
         %% node monitors without distribution: notalive, as monitor_node/2
         {?K_ERROR, {error, notalive, _, _}} = reply(P, ?K_APPLY, 307, 30, {py, mailbox_monitor_node, [M, <<"pt@nohost">>]}),
         {?K_ERROR, {error, notalive, _, _}} = reply(P, ?K_APPLY, 307, 31, {py, mailbox_demonitor_node, [M, 'pt@nohost']}),
         {?K_ERROR, {error, badarg, _, _}} = reply(P, ?K_APPLY, 307, 32, {py, mailbox_demonitor_node, [M, 42]}),
         ok = close(P, 307, 15, M, 5),
         {?K_ERROR, {error, noproc, _, _}} = reply(P, ?K_APPLY, 307, 33, {py, mailbox_demonitor_node, [M, 'pt@nohost']})
     end},
     {mailbox_demonitor_drops_a_queued_down, fun() ->
         %% a fresh mailbox, its window filled: the made-up 'DOWN' waits in
         %% the queue, and demonitor takes it out
         {?K_OK, M} = reply(P, ?K_APPLY, 307, 20, {py, open_mailbox, [9, <<"pt_mon2">>]}),
         send(P, ?K_EVAL, 307, 21, <<"[pt_mon2 ! {f, I} || I <- lists:seq(1, 1025)], ok">>),
         {[_], Window} = lists:partition(fun(F) -> element(1, F) =:= ?K_OK end, recv_sized(P, 1025)),
         {?K_OK, R} = reply(P, ?K_APPLY, 307, 22, {py, mailbox_monitor, [M, random_name()]}),
         {?K_OK, ok} = reply(P, ?K_APPLY, 307, 23, {py, mailbox_demonitor, [M, R]}),
         {?K_OK, after_demonitor} = eval(P, 307, 24, <<"pt_mon2 ! after_demonitor">>),
         [{?K_MESSAGE, 0, 9, {f, 1025}, _}, {?K_MESSAGE, 0, 9, after_demonitor, _}] =
             recv_after_credit(P, 9, Window, 2),
         quiet(P, 200),
         ok = close(P, 307, 25, M, 9)
     end},
     {whereis, fun() ->
         {?K_OK, C} = reply(P, ?K_APPLY, 308, 1, {py, whereis, [<<"py_coordinator">>]}),
         {?K_OK, C} = reply(P, ?K_APPLY, 308, 2, {erlang, whereis, [py_coordinator]}),
         true = is_pid(C),
         %% a port is not a process
         {?K_OK, undefined} = reply(P, ?K_APPLY, 308, 3, {py, whereis, [<<"py_port">>]}),
         {?K_OK, undefined} = reply(P, ?K_APPLY, 308, 4, {py, whereis, [<<"lists">>]}),
         Name = random_name(),
         {?K_OK, undefined} = reply(P, ?K_APPLY, 308, 5, {py, whereis, [Name]}),
         {?K_ERROR, {error, badarg, _, _}} = reply(P, ?K_APPLY, 308, 6, {erlang, binary_to_existing_atom, [Name, utf8]})
     end},
     {bad_credit_frames, fun() ->
         {?K_OK, M} = reply(P, ?K_APPLY, 309, 1, {py, open_mailbox, [8, undefined]}),
         send(P, ?K_CREDIT, 0, 8, bad),
         send_raw(P, ?K_CREDIT, 0, 8, <<1, 2, 3>>),
         send(P, ?K_CREDIT, 0, 8, {-1, 0}),
         Logs = [recv(P), recv(P), recv(P)],
         3 = length([E || {?K_LOG, 0, 0, #{level := warning,
                                          msg := <<"py: dropped a CREDIT frame for mailbox 8", _/binary>>} = E} <- Logs]),
         %% a forged credit message does not open the window: it is one
         %% more message for Python
         Forged = {'$py_credit', M, 1, 1},
         send(P, ?K_APPLY, 309, 2, {erlang, send, [M, Forged]}),
         [{?K_OK, 309, 2, Forged}, {?K_MESSAGE, 0, 8, Forged}] = recv_sorted(P, 2),
         ok = close(P, 309, 3, M, 8)
     end}].

random_name() ->
    iolist_to_binary(io_lib:format("pt_no_such_~b_~b", [erlang:unique_integer([positive]),
                                                        rand:uniform(1 bsl 40)])).

%% Payload bytes of MESSAGE frames, as Python counts them for CREDIT.
bytes(Frames) ->
    lists:sum([Size || {_, _, _, _, Size} <- Frames]).

%% Closes mailbox M (Id) from worker W: the reply and MAILBOX_DOWN come
%% from two processes, in either order.
close(P, W, Seq, M, Id) ->
    send(P, ?K_APPLY, W, Seq, {py, close_mailbox, [M]}),
    [{?K_OK, W, Seq, ok}, {?K_MAILBOX_DOWN, 0, Id, closed}] = recv_sorted(P, 2),
    ok.

credit(P, Id, Frames) ->
    send(P, ?K_CREDIT, 0, Id, {length(Frames), bytes(Frames)}),
    ok.

%% Credits Frames back to mailbox Id and receives the N frames that lets out.
recv_after_credit(P, Id, Frames, N) ->
    ok = credit(P, Id, Frames),
    recv_sized(P, N).

check(Name, Fun) ->
    try Fun() of
        _ -> io:format("ok      ~s~n", [Name]), {Name, ok}
    catch
        Class:Reason:Stack ->
            io:format("FAILED  ~s: ~p:~p~n    ~p~n", [Name, Class, Reason, Stack]),
            {Name, failed}
    end.

%% Workers 200..199+Ws each fetch Calls replies of Size bytes, one in
%% flight per worker; a reply more than 5 s late fails.
big_load(P, Ws, Calls, Size) ->
    Workers = lists:seq(200, 199 + Ws),
    [send(P, ?K_APPLY, W, 1, {binary, copy, [<<W>>, Size]}) || W <- Workers],
    big_loop(P, maps:from_list([{W, 1} || W <- Workers]), Calls, Size, 0).

big_loop(_P, Pending, _Calls, _Size, Done) when map_size(Pending) =:= 0 ->
    Done;
big_loop(P, Pending, Calls, Size, Done) ->
    case recv(P, 5000) of
        {?K_OK, W, Seq, Bin} when byte_size(Bin) =:= Size, map_get(W, Pending) =:= Seq ->
            case Seq of
                Calls ->
                    big_loop(P, maps:remove(W, Pending), Calls, Size, Done + 1);
                _ ->
                    send(P, ?K_APPLY, W, Seq + 1, {binary, copy, [<<W>>, Size]}),
                    big_loop(P, Pending#{W := Seq + 1}, Calls, Size, Done + 1)
            end;
        timeout ->
            error({stalled, pending, Pending})
    end.

%% Workers 100..99+Ws each make Calls sequential calls; all workers have one
%% call in flight at once.
load(P, Ws, Calls) ->
    Workers = lists:seq(100, 99 + Ws),
    [send(P, ?K_CALL, W, 1, {<<"double_it">>, [W * 100000 + 1]}) || W <- Workers],
    load_loop(P, maps:from_list([{W, 1} || W <- Workers]), Calls, 0).

load_loop(_P, Pending, _Calls, Done) when map_size(Pending) =:= 0 ->
    Done;
load_loop(P, Pending, Calls, Done) ->
    {?K_OK, W, Seq, Value} = recv(P),
    #{W := Seq} = Pending,
    Value = 2 * (W * 100000 + Seq),
    case Seq of
        Calls ->
            load_loop(P, maps:remove(W, Pending), Calls, Done + 1);
        _ ->
            send(P, ?K_CALL, W, Seq + 1, {<<"double_it">>, [W * 100000 + Seq + 1]}),
            load_loop(P, Pending#{W := Seq + 1}, Calls, Done + 1)
    end.

wait_for_file_text(File, Text, Ms) when Ms > 0 ->
    case file:read_file(File) of
        {ok, Bin} ->
            case binary:match(Bin, Text) of
                nomatch -> timer:sleep(20), wait_for_file_text(File, Text, Ms - 20);
                _ -> ok
            end;
        _ ->
            timer:sleep(20), wait_for_file_text(File, Text, Ms - 20)
    end;
wait_for_file_text(File, Text, _) ->
    error({not_found_in, File, Text, file:read_file(File)}).

wait_gone(OsPid, Ms) when Ms > 0 ->
    case filelib:is_dir("/proc/" ++ integer_to_list(OsPid)) of
        true -> timer:sleep(2), wait_gone(OsPid, Ms - 2);
        false -> ok
    end;
wait_gone(_, _) ->
    still_running.

%% ------------------------------------------------------------------ timings

timings(Erl, Ebin) ->
    %% alternated, so that load on the machine hits both alike
    N = 11,
    Pairs = [{time_to_hello(Erl, Ebin), time_bare(Erl)} || _ <- lists:seq(1, N)],
    {Helper, Bare} = lists:unzip(Pairs),
    io:format("~nstart-up, median of ~b (ms): helper to HELLO ~.1f ~w; "
              "bare `erl -noshell -noinput -eval 'halt().'` to exit ~.1f ~w~n",
              [N, median(Helper), [round(X) || X <- Helper],
               median(Bare), [round(X) || X <- Bare]]).

time_to_hello(Erl, Ebin) ->
    T0 = erlang:monotonic_time(microsecond),
    P = start_direct(Erl, Ebin),
    {?K_HELLO, 0, 0, _} = recv(P),
    T = (erlang:monotonic_time(microsecond) - T0) / 1000,
    port_close(P),
    T.

time_bare(Erl) ->
    T0 = erlang:monotonic_time(microsecond),
    P = open_port({spawn_executable, Erl},
                  [binary, exit_status, {args, ["-noshell", "-noinput", "-eval", "halt()."]}]),
    receive {P, {exit_status, 0}} -> ok after 10000 -> error(bare_erl_timeout) end,
    (erlang:monotonic_time(microsecond) - T0) / 1000.

median(L) -> lists:nth((length(L) + 1) div 2, lists:sort(L)).
