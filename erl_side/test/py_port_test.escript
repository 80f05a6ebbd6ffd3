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
             {?K_ERROR, {error, {my, reason}, [_ | _]}} = reply(P, ?K_CALL, 3, 1, {<<"raise_error">>, [{my, reason}]}),
             {?K_ERROR, {throw, thrown, _}} = reply(P, ?K_CALL, 3, 2, {<<"raise_throw">>, [thrown]}),
             {?K_ERROR, {exit, gone, _}} = reply(P, ?K_CALL, 3, 3, {<<"raise_exit">>, [gone]}),
             %% the handler survives its calls' exceptions
             {?K_OK, 2} = reply(P, ?K_CALL, 3, 4, {<<"double_it">>, [1]})
         end},
         {error_stack_has_no_helper_frames, fun() ->
             {?K_ERROR, {error, badarith, Stack}} = reply(P, ?K_EVAL, 3, 5, <<"1 + a">>),
             [] = [F || F <- Stack, lists:member(element(1, F), [py_handler])]
         end},
         {unknown_name, fun() ->
             {?K_ERROR, {error, {undefined_function, <<"no_such">>}, []}} =
                 reply(P, ?K_CALL, 4, 1, {<<"no_such">>, [1]})
         end},
         {apply, fun() ->
             {?K_OK, [3, 2, 1]} = reply(P, ?K_APPLY, 4, 2, {lists, reverse, [[1, 2, 3]]}),
             {?K_ERROR, {error, undef, [{no_such_mod_q, f, [1], _} | _]}} =
                 reply(P, ?K_APPLY, 4, 3, {no_such_mod_q, f, [1]}),
             {?K_ERROR, {error, {bad_request, apply, oops}, _}} = reply(P, ?K_APPLY, 4, 4, oops)
         end},
         {eval, fun() ->
             {?K_OK, 2} = eval(P, 5, 1, <<"1 + 1">>),
             {?K_OK, 2} = eval(P, 5, 2, <<"1 + 1 % a comment">>),
             {?K_OK, 3} = eval(P, 5, 3, <<"X = 1. Y = X + 1, X + Y.">>),
             {?K_OK, <<"é✓"/utf8>>} = eval(P, 5, 4, <<"<<\"é✓\"/utf8>>."/utf8>>),
             {?K_ERROR, {error, {syntax_error, <<"1: syntax error before: '.'">>}, _}} = eval(P, 5, 5, <<"1 + .">>),
             {?K_ERROR, {error, {syntax_error, <<"1: syntax error before: ')'">>}, _}} = eval(P, 5, 6, <<"foo(1, )">>),
             {?K_ERROR, {error, {syntax_error, _}, _}} = eval(P, 5, 7, <<"\"unterminated">>),
             {?K_ERROR, {error, {unbound_var, 'Z'}, _}} = eval(P, 5, 8, <<"Z + 1.">>),
             %% fresh bindings every time
             {?K_OK, 5} = eval(P, 5, 9, <<"Q = 5.">>),
             {?K_ERROR, {error, {unbound_var, 'Q'}, _}} = eval(P, 5, 10, <<"Q.">>)
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
             [{?K_ERROR, {error, {undefined_function, N}, []}} = reply(P, ?K_CALL, 60, 100 + I, {N, []})
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
             {?K_ERROR, {error, {compile_error, Msg}, _}} =
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
             {?K_ERROR, {error, {undefined_function, <<"by_string">>}, []}} =
                 reply(P, ?K_CALL, 86, 6, {<<"by_string">>, []}),
             {?K_ERROR, {error, function_clause, _}} =
                 eval(P, 86, 7, <<"py:register_function(bad_arity, fun(A, B) -> {A, B} end)">>)
         end},
         {unregistering_py_port_breaks_nothing, fun() ->
             {?K_OK, true} = eval(P, 87, 1, <<"unregister(py_port)">>),
             {?K_OK, 18} = reply(P, ?K_CALL, 87, 2, {<<"double_it">>, [9]}),
             {?K_OK, 20} = reply(P, ?K_CALL, 88, 1, {<<"double_it">>, [10]}),
             {[<<"still here\n">>], {?K_OK, 1}} = request(P, ?K_CALL, 88, 2, {<<"say">>, [<<"still here">>, 1]})
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
