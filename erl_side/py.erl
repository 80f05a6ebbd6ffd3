%% The helper's public Erlang API: functions Python can call by name, and
%% the evaluation and module loading behind erlang.eval / erlang.load_module.
%%
%% Functions are registered under binary names (an atom or string name is
%% stored as its UTF-8 binary), so that a CALL of an unknown name from
%% Python never creates an atom.  The registry is the ETS table py_registry,
%% owned by py_sup.
%%
%% Erlang calls Python with call_python/2,3 and cast_python/2, and talks to
%% Python's mailboxes (erlang.Mailbox on the Python side) through the
%% processes that stand for them (py_mailbox): Python opens, closes and
%% monitors with them by calling the functions below; Erlang code just
%% sends to their pids or names.
-module(py).

-include("py_protocol.hrl").

%% whereis/1 is this module's own (binary names, no atoms made).
-compile({no_auto_import, [whereis/1]}).

%% API.
-export([register_function/2]).
-export([register_function/3]).
-export([unregister_function/1]).
-export([registered/0]).
-export([call/2]).
-export([eval/1]).
-export([load_source/2]).
-export([keep/1]).
-export([call_python/2]).
-export([call_python/3]).
-export([cast_python/2]).
-export([open_mailbox/2]).
-export([close_mailbox/1]).
-export([mailbox_monitor/2]).
-export([mailbox_demonitor/2]).
-export([mailbox_monitor_node/2]).
-export([mailbox_demonitor_node/2]).
-export([whereis/1]).

-type name() :: atom() | binary() | string().
-export_type([name/0]).

%% Error formatting.
-export([format_error/1]).

%% API.

%% Registers Fun under Name: erlang.call(Name, A, B) runs Fun([A, B]).
%% Registering a name again replaces the function.
-spec register_function(name(), fun((list()) -> term())) -> ok.
register_function(Name, Fun) when is_function(Fun, 1) ->
    true = ets:insert(py_registry, {name(Name), {'fun', Fun}}),
    ok.

%% Registers Module:Function under Name: erlang.call(Name, A, B) runs
%% Module:Function([A, B]).  The module is looked up at each call, so a
%% reloaded module's new code is used.
-spec register_function(name(), module(), atom()) -> ok.
register_function(Name, Module, Function) when is_atom(Module), is_atom(Function) ->
    true = ets:insert(py_registry, {name(Name), {mfa, Module, Function}}),
    ok.

%% Removes Name; ok also if it was not registered.
-spec unregister_function(name()) -> ok.
unregister_function(Name) ->
    true = ets:delete(py_registry, name(Name)),
    ok.

%% The registered names, sorted.
-spec registered() -> [binary()].
registered() ->
    lists:sort(ets:select(py_registry, [{{'$1', '_'}, [], ['$1']}])).

%% Calls a registered function from Erlang, as a CALL from Python would.
%% (py_handler inlines the same lookup; keep the two in step.)
-spec call(name(), list()) -> term().
call(Name, Args) ->
    Key = name(Name),
    case ets:lookup(py_registry, Key) of
        [{_, {'fun', Fun}}] -> Fun(Args);
        [{_, {mfa, Module, Function}}] -> Module:Function(Args);
        [] -> erlang:error({undefined_function, Key})
    end.

%% Evaluates Erlang expressions and returns the value of the last one.
%% The final "." is optional.  Several dot-terminated sequences are
%% evaluated in order with their bindings carried over, as in the shell
%% ("X = 1. X + 1" is 2).  Everything is parsed before anything runs, so
%% a syntax error has no side effects.  Scan and parse errors raise
%% error:{syntax_error, Message}, Message a binary like
%% <<"1: syntax error before: ')'">>.
-spec eval(unicode:chardata()) -> term().
eval(Source) ->
    Text = case unicode:characters_to_list(Source) of
               List when is_list(List) -> List;
               _ -> erlang:raise(error, {syntax_error, <<"the source is not valid UTF-8 text">>}, [])
           end,
    Tokens = case erl_scan:string(Text, 1) of
                 {ok, Ts, End} -> ensure_dot(Ts, End);
                 {error, ScanError, _} -> syntax_error(ScanError)
             end,
    Sequences = [case erl_parse:parse_exprs(Seq) of
                     {ok, Exprs} -> Exprs;
                     {error, ParseError} -> syntax_error(ParseError)
                 end || Seq <- split_at_dots(Tokens)],
    eval_sequences(Sequences, erl_eval:new_bindings()).

%% Compiles the module in Source (the text of an .erl file) and loads it;
%% returns the module's name.  File names the source in error messages and
%% is the directory searched first for -include files.  The preprocessor
%% runs (macros such as ?MODULE, -define, -include, -ifdef all work).
%% Compile errors raise error:{compile_error, Message}, Message a binary of
%% "File:Line: text" lines; warnings are not reported.  A module loaded
%% again replaces the old code (processes still running the code before
%% that are killed, as with c:l/1).  A binary Source is the file's bytes,
%% read as erlc would (UTF-8 unless a coding comment says latin-1).  A
%% module named like one of the helper's own (py, py_handler, ...) raises
%% error:{reserved_module, Module} and is not loaded.
-spec load_source(unicode:chardata(), unicode:chardata()) -> module().
load_source(Source, File) ->
    FileName = unicode:characters_to_list(File),
    Bytes = if
                is_binary(Source) -> Source;
                true -> unicode:characters_to_binary(Source)
            end,
    Forms = preprocess(Bytes, FileName),
    case compile:forms(Forms, [binary, return_errors, return_warnings,
                               {source, FileName}]) of
        {ok, Module, Beam, _Warnings} ->
            ok = not_the_helpers(Module),
            _ = code:purge(Module),
            case code:load_binary(Module, FileName, Beam) of
                {module, Module} -> Module;
                {error, What} -> erlang:error({load_error, Module, What})
            end;
        {error, Errors, _Warnings} ->
            %% no stack trace: it would only show this function
            erlang:raise(error, {compile_error, format_errors(Errors)}, [])
    end.

%% Runs Fun in the helper's keeper process, which lives as long as the
%% helper, and returns Fun's value (or raises what Fun raised).  What a call
%% creates belongs to the worker's handler process, which a cancelled call
%% kills; what Fun creates belongs to the keeper: an ETS table made in Fun
%% is owned by it, a server Fun starts with start_link is linked to it
%% (and a crash of that server does not take the keeper down).  Fun should
%% return soon (kept Funs run one at a time) and must not call keep/1.
%%   py:keep(fun() -> ets:new(cache, [named_table, public]) end)
-spec keep(fun(() -> Result)) -> Result.
keep(Fun) ->
    py_keeper:keep(Fun).

%% Calls the Python function registered under Name with Args (the list
%% of its arguments) and returns its result, waiting as long as it takes.
%% See call_python/3.
-spec call_python(atom() | binary(), list()) -> term().
call_python(Name, Args) ->
    call_python(Name, Args, infinity).

%% Calls the Python function registered under Name with Args and returns
%% its result; Timeout is in milliseconds.  Raises:
%%   error:{python, Type, Message, Traceback}  the function raised: the
%%                                            exception's type, message and
%%                                            traceback, each a binary as
%%                                            Python sent it
%%   error:{undefined_python_function, Name}  nothing is registered as Name
%%                                            (Name as given here)
%%   error:{python_timeout, Name}             no answer within Timeout; the
%%                                            function may still run, and its
%%                                            late result is dropped
%%   error:{python_unavailable, Name}         the channel is gone
%%   error:badarg                             Name not an atom or binary,
%%                                            Args not a proper list
%% Called while a call from Python runs (in a worker's handler), the
%% request goes to the Python thread that waits for that call, which runs
%% the function itself: Python code that calls Erlang that calls back into
%% Python nests on one thread, as plain calls would, and needs no free
%% thread in a pool (nor can it deadlock on a lock that thread holds).
%% From any other process, Python's thread pool runs it.  An atom Name is
%% sent as its UTF-8 text; no atom is ever made from Python's answer.
-spec call_python(atom() | binary(), list(), timeout()) -> term().
call_python(Name, Args, Timeout)
  when (is_binary(Name) orelse is_atom(Name)), is_list(Args), length(Args) >= 0,
       (Timeout =:= infinity orelse (is_integer(Timeout) andalso Timeout >= 0)) ->
    {Worker, Seq} = case get('$py_call') of
                        {W, S} when W =/= 0, W =/= ?ASYNC_WORKER -> {W, S};
                        _ -> {0, 0}
                    end,
    %% [reply]: the alias dies with the one reply, so a second message
    %% naming it (a forged one) cannot reach this process.
    Alias = alias([reply]),
    Frame = [<<?K_CALLBACK, Worker:32, Seq:32>>,
             term_to_binary({Alias, name_binary(Name), Args})],
    try
        callback(Name, Frame)
    catch
        error:{python_unavailable, _} = Unavailable ->
            _ = unalias(Alias),
            erlang:error(Unavailable)
    end,
    wait_python(Alias, Name, Timeout);
call_python(Name, Args, Timeout) ->
    erlang:error(badarg, [Name, Args, Timeout]).

%% Runs the Python function registered under Name with Args in Python's
%% thread pool, and returns ok at once: nothing comes back, not even an
%% exception.  Raises error:{python_unavailable, Name} if
%% the channel is gone, error:badarg for a bad Name or Args.
-spec cast_python(atom() | binary(), list()) -> ok.
cast_python(Name, Args)
  when (is_binary(Name) orelse is_atom(Name)), is_list(Args), length(Args) >= 0 ->
    callback(Name, [<<?K_CALLBACK, 0:32, 0:32>>,
                    term_to_binary({undefined, name_binary(Name), Args})]);
cast_python(Name, Args) ->
    erlang:error(badarg, [Name, Args]).

%% Opens the Erlang side of Python mailbox Id (Python's own number for it,
%% 1..2^32-1, never reused): a new process that forwards every message it
%% receives to Python, see py_mailbox.  Registered as Name (UTF-8) unless
%% Name is undefined.  Raises error:badarg if Name is taken (or not a valid
%% name) or Id is in use.  Called by Python (an APPLY); the coordinator
%% spawns the process, as it must know it to route CREDIT frames to it and
%% to report its end with MAILBOX_DOWN.
-spec open_mailbox(pos_integer(), binary() | undefined) -> pid().
open_mailbox(Id, Name)
  when is_integer(Id), Id > 0, Id =< 16#FFFFFFFF, (is_binary(Name) orelse Name =:= undefined) ->
    case erlang:whereis(py_coordinator) of
        undefined ->
            erlang:error(noproc, [Id, Name]);
        Coordinator ->
            %% gen:call's way: the monitor's alias carries the reply, and
            %% the 'DOWN' ends the wait should the coordinator die.
            Ref = erlang:monitor(process, Coordinator, [{alias, demonitor}]),
            Coordinator ! {'$py_open_mailbox', Ref, Id, Name},
            receive
                {Ref, Result} ->
                    erlang:demonitor(Ref, [flush]),
                    case Result of
                        {ok, Pid} -> Pid;
                        {error, Reason} -> erlang:error(Reason, [Id, Name])
                    end;
                {'DOWN', Ref, process, _, _} ->
                    erlang:error(noproc, [Id, Name])
            end
    end;
open_mailbox(Id, Name) ->
    erlang:error(badarg, [Id, Name]).

%% Closes a mailbox: its process exits with reason `closed` (Python gets
%% MAILBOX_DOWN closed) and messages it had not yet passed on are dropped.
%% Returns once the process is gone; ok also if it was gone already.  An
%% exit signal rather than a request: the mailbox stops at once, not after
%% the messages queued before the request.  A pid that is no mailbox
%% raises error:badarg.
-spec close_mailbox(pid()) -> ok.
close_mailbox(Pid) when is_pid(Pid), node(Pid) =:= node() ->
    Ref = erlang:monitor(process, Pid),
    case erlang:process_info(Pid, initial_call) of
        {initial_call, {py_mailbox, init, _}} ->
            exit(Pid, closed);
        undefined ->
            ok;
        _ ->
            erlang:demonitor(Ref, [flush]),
            erlang:error(badarg, [Pid])
    end,
    receive
        {'DOWN', Ref, process, Pid, _} -> ok
    end;
close_mailbox(Pid) ->
    erlang:error(badarg, [Pid]).

%% The mailbox monitors Target: its 'DOWN' message, {'DOWN', Ref, process,
%% Object, Reason}, reaches Python as any other message.  Target is a pid,
%% a registered name (atom, or binary: a binary that is no atom names no
%% process, and the 'DOWN' with reason noproc and Object {Name, node()},
%% Name the binary, comes at once), or {Name, Node}.  Raises error:noproc if
%% the mailbox is closed, error:badarg for a Target of another shape.
-spec mailbox_monitor(pid(), pid() | atom() | binary() | {atom() | binary(), atom() | binary()}) ->
          reference().
mailbox_monitor(Pid, Target) ->
    case mailbox_request(Pid, {monitor, Target}) of
        {ok, Ref} -> Ref;
        {error, Reason} -> erlang:error(Reason, [Pid, Target])
    end.

%% The mailbox monitors Node with erlang:monitor_node/2: {nodedown, Node}
%% reaches Python as any other message when the connection to Node is lost
%% (at once if Node cannot be reached).  Each call adds one monitor, as
%% monitor_node/2 does.  Raises error:noproc if the mailbox is closed,
%% error:notalive without distribution, error:badarg for a Node that is no
%% atom or binary.
-spec mailbox_monitor_node(pid(), atom() | binary()) -> ok.
mailbox_monitor_node(Pid, Node) ->
    case mailbox_request(Pid, {monitor_node, Node}) of
        {ok, ok} -> ok;
        {error, Reason} -> erlang:error(Reason, [Pid, Node])
    end.

%% Removes one monitor made by mailbox_monitor_node/2, with
%% erlang:monitor_node(Node, false): the other monitors of Node stay, and
%% none left is no error.  A {nodedown, Node} the mailbox has already
%% received (Node went down before) still reaches Python.  Raises as
%% mailbox_monitor_node/2 does: error:noproc if the mailbox is closed,
%% error:notalive without distribution, error:badarg for a Node that is
%% no atom or binary.
-spec mailbox_demonitor_node(pid(), atom() | binary()) -> ok.
mailbox_demonitor_node(Pid, Node) ->
    case mailbox_request(Pid, {demonitor_node, Node}) of
        {ok, ok} -> ok;
        {error, Reason} -> erlang:error(Reason, [Pid, Node])
    end.

%% Removes a monitor made by mailbox_monitor/2.  A 'DOWN' for it that the
%% mailbox has not yet passed on is dropped; one already sent to Python is
%% not (Python drops it).  Raises error:noproc if the mailbox is closed.
-spec mailbox_demonitor(pid(), reference()) -> ok.
mailbox_demonitor(Pid, Ref) when is_reference(Ref) ->
    mailbox_request(Pid, {demonitor, Ref});
mailbox_demonitor(Pid, Ref) ->
    erlang:error(badarg, [Pid, Ref]).

%% The pid registered as Name (UTF-8), or undefined, as erlang:whereis/1
%% but without making an atom of an unknown name.  A name registered to a
%% port is undefined here: Python can only use processes.
-spec whereis(binary() | atom()) -> pid() | undefined.
whereis(Name) when is_binary(Name) ->
    try binary_to_existing_atom(Name, utf8) of
        Atom -> whereis(Atom)
    catch
        error:badarg -> undefined
    end;
whereis(Name) when is_atom(Name) ->
    case erlang:whereis(Name) of
        Pid when is_pid(Pid) -> Pid;
        _ -> undefined
    end;
whereis(Name) ->
    erlang:error(badarg, [Name]).

%% Error formatting.

%% The erl_scan/erl_parse convention, so that syntax_error/1 formats this
%% module's own errors like theirs.
-spec format_error(no_expression) -> string().
format_error(no_expression) -> "no expression to evaluate".

%% Internal.

%% Loading a module over one of the helper's own would break the helper
%% (every later eval or load would call the user's module instead).
not_the_helpers(Module) ->
    {ok, Own} = application:get_key(py, modules),
    case lists:member(Module, Own) of
        false -> ok;
        true -> erlang:raise(error, {reserved_module, Module}, [])
    end.

%% The port is stored by the coordinator at start-up; a closed port makes
%% port_command/2 raise badarg.
callback(Name, Frame) ->
    case persistent_term:get({py, port}, undefined) of
        undefined ->
            erlang:error({python_unavailable, Name});
        Port ->
            try port_command(Port, Frame) of
                true -> ok
            catch
                error:badarg -> erlang:error({python_unavailable, Name})
            end
    end.

%% The answer to a CALLBACK, forwarded by the coordinator to its alias.
%% Timeouts beyond the longest `after` (2^32-1 ms, 49 days) wait in steps.
wait_python(Alias, Name, Timeout) when is_integer(Timeout), Timeout > 16#FFFFFFFF ->
    receive
        {Alias, _, _} = Answer -> python_answer(Answer, Name)
    after 16#FFFFFFFF ->
        wait_python(Alias, Name, Timeout - 16#FFFFFFFF)
    end;
wait_python(Alias, Name, Timeout) ->
    receive
        {Alias, _, _} = Answer -> python_answer(Answer, Name)
    after Timeout ->
        _ = unalias(Alias),
        %% A reply that came in just before unalias/1 is dropped here.
        receive {Alias, _, _} -> ok after 0 -> ok end,
        erlang:error({python_timeout, Name})
    end.

python_answer({_, ok, Value}, _Name) ->
    Value;
python_answer({_, error, {undefined_python_function, _}}, Name) ->
    %% Python has the name as text; the caller's own term reads better.
    erlang:error({undefined_python_function, Name});
python_answer({_, error, Reason}, _Name) ->
    erlang:error(Reason).

name_binary(Name) when is_binary(Name) -> Name;
name_binary(Name) -> atom_to_binary(Name, utf8).

%% A request to a mailbox process, answered on the monitor's alias.  Only
%% a local py_mailbox process is asked: a request sent to another process
%% would never be answered.
mailbox_request(Pid, Request) when is_pid(Pid), node(Pid) =:= node() ->
    case erlang:process_info(Pid, initial_call) of
        {initial_call, {py_mailbox, init, _}} ->
            Ref = erlang:monitor(process, Pid, [{alias, demonitor}]),
            Pid ! {'$py_mailbox', Ref, Request},
            receive
                {Ref, Result} ->
                    erlang:demonitor(Ref, [flush]),
                    Result;
                {'DOWN', Ref, process, _, _} ->
                    erlang:error(noproc)
            end;
        undefined ->
            erlang:error(noproc);
        _ ->
            erlang:error(badarg)
    end;
mailbox_request(_Pid, _Request) ->
    erlang:error(badarg).

name(Name) when is_binary(Name) ->
    Name;
name(Name) when is_atom(Name) ->
    atom_to_binary(Name, utf8);
name(Name) when is_list(Name) ->
    case unicode:characters_to_binary(Name) of
        Bin when is_binary(Bin) -> Bin;
        _ -> erlang:error(badarg, [Name])
    end.

%% "1 + 1" is as good as "1 + 1.": add the dot after the last token (not
%% after the text, which may end in a % comment).
ensure_dot([], End) ->
    %% Erlang's own message would be "syntax error before: '.'"
    syntax_error({End, ?MODULE, no_expression});
ensure_dot(Tokens, End) ->
    case lists:last(Tokens) of
        {dot, _} -> Tokens;
        _ -> Tokens ++ [{dot, End}]
    end.

split_at_dots(Tokens) ->
    split_at_dots(Tokens, [], []).

split_at_dots([], [], Seqs) ->
    lists:reverse(Seqs);
split_at_dots([{dot, _} = Dot | Rest], Acc, Seqs) ->
    split_at_dots(Rest, [], [lists:reverse(Acc, [Dot]) | Seqs]);
split_at_dots([Token | Rest], Acc, Seqs) ->
    split_at_dots(Rest, [Token | Acc], Seqs).

eval_sequences([Exprs], Bindings) ->
    {value, Value, _} = erl_eval:exprs(Exprs, Bindings),
    Value;
eval_sequences([Exprs | Rest], Bindings) ->
    {value, _, Bindings1} = erl_eval:exprs(Exprs, Bindings),
    eval_sequences(Rest, Bindings1).

-spec syntax_error(erl_scan:error_info()) -> no_return().
syntax_error({Location, Module, Description}) ->
    Message = io_lib:format("~ts: ~ts", [location(Location),
                                         Module:format_error(Description)]),
    %% no stack trace: it would only show this module
    erlang:raise(error, {syntax_error, unicode:characters_to_binary(Message)}, []).

location({Line, Column}) -> io_lib:format("~w:~w", [Line, Column]);
location(Line) when is_integer(Line) -> integer_to_list(Line);
location(_) -> "?".

%% epp only reads files, so the source goes through a temporary file, in a
%% directory of its own (epp looks for -include files next to the file it
%% reads first; nothing else may be found there).  -file attributes and
%% messages name File, not the temporary file.
preprocess(Source, FileName) ->
    Dir = temp_dir(),
    ok = file:make_dir(Dir),
    Tmp = filename:join(Dir, "source.erl"),
    try
        ok = file:write_file(Tmp, Source),
        Includes = [filename:dirname(FileName) || FileName =/= "nofile"],
        case epp:parse_file(Tmp, [{source_name, FileName}, {includes, Includes}]) of
            {ok, Forms} ->
                Forms;
            {error, Reason} ->
                Message = io_lib:format("~ts: ~tp", [FileName, Reason]),
                erlang:raise(error, {compile_error, unicode:characters_to_binary(Message)}, [])
        end
    after
        _ = file:delete(Tmp),
        _ = file:del_dir(Dir)
    end.

temp_dir() ->
    Root = case os:getenv("TMPDIR") of
               false -> "/tmp";
               "" -> "/tmp";
               Path -> Path
           end,
    filename:join(Root, io_lib:format("py_load_~s_~b",
                                      [os:getpid(), erlang:unique_integer([positive])])).

format_errors(Errors) ->
    unicode:characters_to_binary(
      lists:join($\n, [[where(File, Location), ": ", Module:format_error(Description)]
                       || {File, Infos} <- Errors,
                          {Location, Module, Description} <- Infos])).

%% "File:Line", or just "File" for errors about the whole module.
where(File, none) -> File;
where(File, Location) -> [File, $:, location(Location)].
