%% A handler: the process that runs the calls of one Python worker.
%%
%% One per worker, spawned (and monitored, not linked) by py_coordinator on
%% the worker's first frame and kept for all its later calls, so the common
%% path costs no spawn.  A worker has at most one call in flight, so a
%% handler runs its calls one after the other.  It writes each reply to the
%% channel port itself, so the coordinator never waits for a handler.  It
%% holds the port, not its registered name py_port: a user function may
%% unregister the name, and replies must still get through.
%%
%% Registered functions run in this process: what they leave behind (links,
%% trap_exit, dictionary entries) stays for the worker's next call, except
%% stray messages, which are dropped between calls so that the mailbox does
%% not grow.
-module(py_handler).

-include("py_protocol.hrl").

%% Bytes of request + reply after which the handler collects its garbage
%% before waiting for the next call.
-define(COLLECT_AFTER, 1024 * 1024).

%% API.
-export([start_monitor/1]).
-export([start_call/1]).

%% Internal.
-export([init/1]).

%% API.

%% Spawns a handler, monitored by the caller (the coordinator).  Plain
%% spawn, not proc_lib: the handler catches everything its calls raise, so
%% it only dies of an exit signal (a cancel, a linked process), and the
%% coordinator reports that to Python; a crash report would only repeat it.
-spec start_monitor(port()) -> {pid(), reference()}.
start_monitor(Port) ->
    spawn_monitor(?MODULE, init, [Port]).

%% Spawns a process, monitored by the caller, that runs the one async call
%% in Frame (CALL_ASYNC, APPLY_ASYNC or EVAL_ASYNC), writes its reply and
%% exits.  A process per call: many calls of one worker run at once, and a
%% CANCEL kills exactly the call it names.
%%
%% The process does not write its reply: it exits with it, as
%% {'$py_reply', IoData}, and the coordinator writes it when the 'DOWN'
%% arrives.  That 'DOWN' is needed anyway (to forget the call, or to report
%% a death), so a reply costs one message between schedulers instead of
%% two (a port write from another scheduler, then the 'DOWN').  Links the
%% call made are removed first: a linked process must not receive that
%% exit reason (it would die of it), just as it would not notice a normal
%% exit.
-spec start_call(binary()) -> {pid(), reference()}.
start_call(Frame) ->
    spawn_monitor(fun() -> exit_with_reply(Frame) end).

%% Internal.

-spec init(port()) -> no_return().
init(Port) ->
    loop(Port).

loop(Port) ->
    receive
        {'$py_frame', Frame} ->
            handle(Frame, Port),
            loop(Port);
        _Stray ->
            %% Left by a finished call (a late reply, a timer, an 'EXIT').
            loop(Port)
    end.

exit_with_reply(Frame) ->
    Reply = reply(Frame),
    case erlang:process_info(self(), links) of
        {links, []} -> ok;
        {links, Links} -> lists:foreach(fun erlang:unlink/1, Links)
    end,
    exit({'$py_reply', Reply}).

handle(Frame, Port) ->
    [_Header, Body] = Reply = reply(Frame),
    true = port_command(Port, Reply),
    %% An idle process never garbage-collects, so the last request and
    %% reply would stay referenced (and in memory) until this worker's next
    %% call.  Cheap to drop them now when they are big.
    case byte_size(Frame) + byte_size(Body) > ?COLLECT_AFTER of
        true -> _ = garbage_collect(), ok;
        false -> ok
    end.

%% The reply frame (header and payload) for the request in Frame.
reply(<<Kind, Worker:32, Seq:32, Payload/binary>>) ->
    %% py_user reads '$py_call' from this dictionary to attribute io:format
    %% output to the call that printed it, and py:call_python/2,3 to send
    %% its CALLBACK to the Python thread that waits for this call.  It must
    %% stay set for the whole call.
    put('$py_call', {Worker, Seq}),
    %% term_to_binary inside the try: a result that cannot be encoded
    %% (system_limit) becomes an ERROR reply, not a dead handler.
    Reply =
        try term_to_binary(run(Kind, Payload)) of
            Result ->
                [<<?K_OK, Worker:32, Seq:32>>, Result]
        catch
            Class:Reason:Stack ->
                [<<?K_ERROR, Worker:32, Seq:32>>, error_reply(Class, Reason, Stack)]
        end,
    erase('$py_call'),
    Reply.

run(Kind, Payload) when Kind >= ?K_CALL_ASYNC, Kind =< ?K_EVAL_ASYNC ->
    run(Kind - ?K_CALL_ASYNC + ?K_CALL, Payload);
run(?K_CALL, Payload) ->
    case binary_to_term(Payload) of
        {Name, Args} when is_binary(Name) ->
            call(Name, Args);
        {Name, Args} when is_atom(Name) ->
            call(atom_to_binary(Name, utf8), Args);
        Other ->
            erlang:error({bad_request, call, Other})
    end;
run(?K_APPLY, Payload) ->
    case binary_to_term(Payload) of
        {Module, Function, Args} when is_atom(Module), is_atom(Function), is_list(Args) ->
            apply(Module, Function, Args);
        Other ->
            erlang:error({bad_request, apply, Other})
    end;
run(?K_EVAL, Payload) ->
    py:eval(binary_to_term(Payload));
run(Kind, _Payload) ->
    erlang:error({unknown_kind, Kind}).

%% The registry lookup is inlined here (rather than calling py:call/2) to
%% keep the hot path short; keep the two in step.  Keys are binaries, so an
%% unknown name coming from Python never becomes an atom.
call(Name, Args) ->
    case ets:lookup(py_registry, Name) of
        [{_, {'fun', Fun}}] ->
            Fun(Args);
        [{_, {mfa, Module, Function}}] ->
            Module:Function(Args);
        [] ->
            erlang:raise(error, {undefined_function, Name}, [])
    end.

%% The ERROR payload {Class, Reason, Stacktrace, Message}: Message is the
%% text Erlang prints for the exception (py_error).  Should even that reply
%% fail to encode, the 3-tuple without text is sent, with the reason Python
%% can still show; a handler must always answer.
error_reply(Class, Reason, Stack) ->
    User = user_stack(Stack),
    try
        term_to_binary({Class, Reason, py_error:stack(User), py_error:format(Class, Reason, User)})
    catch
        _:_ -> term_to_binary({Class, Reason, User})
    end.

%% The stack trace Python sees ends at the user's code: this module's frames
%% (always the outermost ones) say nothing to the caller.
user_stack(Stack) ->
    lists:takewhile(fun(Frame) -> element(1, Frame) =/= ?MODULE end, Stack).
