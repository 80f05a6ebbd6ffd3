%% The coordinator: owns the channel to Python and routes frames to handlers.
%%
%% == Wire protocol ==
%%
%% The channel is the helper's stdin (Python -> BEAM) and stdout
%% (BEAM -> Python), opened as one port: open_port({fd, 0, 1}, [{packet, 4},
%% binary, eof]) with busy limits off (see ?BUSY_LIMITS for why).  Nothing
%% else may write to fd 1 (see py_user; the one leak
%% no option can stop is erlang:display/1, which the emulator writes to fd 1
%% itself -- do not call it in the helper).
%%
%% Every frame is <<Len:32/big, Body:Len/binary>> ({packet,4}), and every
%% Body has a fixed 9-byte header followed by one external-term payload:
%%
%%   <<Kind:8, Worker:32/big, Seq:32/big, Payload/binary>>
%%
%% so this process routes a frame by matching the header, without decoding
%% the payload (except for CALLBACK_REPLY, SEND and CREDIT, which it acts
%% on itself: each is one send, cheaper done than handed to a handler).
%% Worker is a Python worker (a pool entry used by one thread
%% at a time); each worker has one handler process here (py_handler), spawned
%% on the first frame for it.  Seq is the worker's call counter: every reply
%% carries the Worker and Seq of its request, and Python drops a reply whose
%% Seq is not the one the worker waits for (the call timed out).  Worker 0
%% is the control channel: HELLO, LOG, and OUTPUT not attributed to any call.
%%
%% Kinds (numbers in py_protocol.hrl and erlang_module/protocol.h):
%%
%%   Python -> BEAM
%%   CALL    1  {Name :: binary(), Args :: list()}: the function registered
%%              under Name (py:register_function/2,3) is called with Args
%%              as one list.  Name may also be an atom.
%%   APPLY   2  {Module :: atom(), Function :: atom(), Args :: list()}:
%%              apply(Module, Function, Args).
%%   EVAL    3  Source :: binary() (UTF-8 text; a charlist is accepted too):
%%              Erlang expressions, value of the last one.  The final "." is
%%              optional; "X = 1. X + 1" evaluates both, X stays bound.
%%              Each EVAL starts with no variables bound.
%%   CALL_ASYNC 5, APPLY_ASYNC 6, EVAL_ASYNC 7: the same payloads as
%%              CALL, APPLY and EVAL, but each call runs in a process of its
%%              own, keyed by {Worker, Seq} (py_handler:start_call/2), so any
%%              number are in flight at once.  Python sends them on worker
%%              ?ASYNC_WORKER (16#FFFFFFFF), Seq naming the call.  If that
%%              process dies before replying, the ERROR exit:Reason is sent
%%              from here, as for a handler.
%%   CANCEL  4  [] : abandon (Worker, Seq).  For an async call: its process
%%              is killed if it still runs.  Otherwise:  If the worker's handler was last
%%              given Seq it is killed (it may still be running it); the next
%%              frame for Worker gets a fresh handler.  Nothing is sent back
%%              for the cancelled call.  If the handler owned ETS tables or
%%              had links, a warning naming them is logged (a LOG frame).  A CANCEL for another Seq is ignored.
%%   CALLBACK_REPLY 33  {Alias :: reference(), ok, Value} or
%%              {Alias, error, Reason}: the answer to a CALLBACK; Worker and
%%              Seq are ignored.  Sent on as the message {Alias, Tag, Value}
%%              to Alias, the caller's alias, which is gone once the caller
%%              has timed out: a late answer is dropped by the runtime.  An
%%              Alias that is not a reference is dropped; a payload of
%%              another shape is logged (a warning) and dropped.  Reason is
%%              {python, Type, Message, Traceback} (binaries) or
%%              {undefined_python_function, Name :: binary()}.
%%   SEND   34  {Dest, Msg}: Dest ! Msg, done by this process, so that the
%%              SENDs of worker 0 reach one Dest in the order Python wrote
%%              them.  Dest is a pid; a registered name as a UTF-8 binary,
%%              never made an atom (no such atom, no process registered
%%              under it, or a port registered under it: badarg); or
%%              {Name, Node}, each an atom or a binary (made an atom: node
%%              names are atoms anyway), which never fails, as in Erlang.
%%              Ports are never sent to: a message a port does not
%%              understand kills it, and the channel is a port.  On worker
%%              0 nothing is sent back.  On any other worker the reply (same
%%              Worker and Seq) is OK with `ok`, or ERROR with
%%              {error, badarg, [], Message}, Message a binary such as
%%              <<"bad argument: no process is registered as foo">>.  A send
%%              to a dead pid is ok, as in Erlang.
%%   CREDIT 36  Worker 0, Seq = a mailbox's Id: {Msgs, Bytes}: Python's code
%%              has taken Msgs of that mailbox's MESSAGE frames, of Bytes
%%              payload bytes in all (each frame's size minus its 9-byte
%%              header), so its window opens by as much (py_mailbox).  Sent
%%              on to the mailbox process; an unknown Id is ignored (the
%%              mailbox is gone).
%%
%%   BEAM -> Python
%%   OK     16  Result: the value the call returned.
%%   ERROR  17  {Class, Reason, Stacktrace, Message}: the call raised
%%              (Class = error | throw | exit).  The stack trace leaves out
%%              the helper's own frames; each location's file is a UTF-8
%%              binary.  Message :: binary() is the text Erlang prints for
%%              the exception (py_error: erl_error:format_exception/4 with
%%              extended error info, cut to about 4000 characters; Elixir's
%%              message for an Elixir exception), or <<>> if formatting
%%              failed.  A 3-tuple {Class, Reason, Stacktrace} (no text) is
%%              valid too: the coordinator sends one when a handler dies,
%%              and a handler when the 4-tuple cannot be encoded; Python
%%              then words the message itself.  Reasons the helper makes itself
%%              (those marked [] come with an empty stack trace):
%%                error:{undefined_function, Name}   [] CALL of a Name that
%%                                                   is not registered
%%                error:undef                        APPLY of a function that
%%                                                   does not exist; the top
%%                                                   frame is {M, F, Args, _}
%%                error:{syntax_error, Message}      [] EVAL that does not
%%                                                   scan or parse; Message is
%%                                                   a binary such as
%%                                                   <<"1: syntax error
%%                                                   before: ')'">>
%%                error:{compile_error, Message}     [] py:load_source/2;
%%                                                   Message is a binary of
%%                                                   "File:Line: text" lines
%%                error:{load_error, Module, Why}    py:load_source/2 could
%%                                                   not load (e.g. a sticky
%%                                                   OTP module)
%%                error:{bad_request, Kind, Payload} a payload of the wrong
%%                                                   shape (call | apply)
%%                error:{unknown_kind, Kind}         a Kind this side does
%%                                                   not know
%%                exit:Reason                        [] the handler process
%%                                                   died while running the
%%                                                   call (killed, or a linked
%%                                                   process died).  Sent by
%%                                                   the coordinator for the
%%                                                   worker's last Seq: if that
%%                                                   call had already been
%%                                                   answered, Python drops it
%%                                                   as stale.
%%   HELLO  18  Worker 0, Seq 0, the first frame on the channel:
%%              #{protocol => ?PY_PROTOCOL_VERSION, otp_release => <<"25">>,
%%                erts_version => <<"13.1.5">>, node => node(),
%%                os_pid => integer()}
%%   OUTPUT 19  {stdout, Data :: binary()} (UTF-8): text a process wrote to
%%              `user` (io:format/2 and friends; see py_user).  Worker and Seq
%%              are those of the call whose handler printed it -- the frame
%%              is written before that call's reply -- or 0/0 when no call
%%              printed it.  Logger events are LOG frames, never OUTPUT.
%%   CALLBACK 32  {Alias, Name :: binary(), Args :: list()}: run the Python
%%              function registered as Name with Args.  From
%%              py:call_python/2,3 Alias is a reference (an alias of the
%%              caller) and Python answers with CALLBACK_REPLY; from
%%              py:cast_python/2 it is the atom undefined and nothing is
%%              answered.  Worker 0, Seq 0: Python's thread pool runs it.
%%              Worker W, Seq S: a handler made it while running call
%%              (W, S), and the Python thread waiting for that call runs it
%%              (callbacks nest on one thread, as calls do).  A call to
%%              Erlang that callback makes in turn comes on another worker,
%%              so the blocked handler never has a frame to take meanwhile.
%%   MESSAGE 35 Worker 0, Seq = a mailbox's Id: Msg, one message the
%%              mailbox's process received, one per frame, in the order it
%%              received them, written by that process (py_mailbox).  At
%%              most ?MAILBOX_WINDOW_MSGS (1024) frames, and while fewer than
%%              ?MAILBOX_WINDOW_BYTES (64 MiB) of payload, are sent and not
%%              yet credited back (CREDIT); the rest wait on this side.
%%              Mailboxes are opened by an APPLY of py:open_mailbox(Id,
%%              Name): Id is Python's (1..2^32-1, never reused), Name a
%%              binary to register the process under, or undefined; the
%%              reply is its pid, or ERROR badarg if Name is taken or Id in
%%              use.  py:close_mailbox/1, py:mailbox_monitor/2,
%%              py:mailbox_demonitor/2, py:mailbox_monitor_node/2,
%%              py:mailbox_demonitor_node/2 and py:whereis/1 are APPLYs too.
%%   MAILBOX_DOWN 37  Worker 0, Seq = a mailbox's Id: Reason: the mailbox's
%%              process is gone (`closed` after py:close_mailbox/1, `killed`,
%%              or what it crashed with) and Id is forgotten.  Written
%%              after the last MESSAGE frame of that mailbox.
%%   LOG    20  Worker 0, Seq 0: one logger event (py_log_h), for Python's
%%              logging: #{level => atom(), msg => binary() (formatted, one
%%              line), meta => #{pid => binary(), mfa => {M, F, Arity},
%%              file => binary(), line => integer(), domain => [atom()],
%%              time => integer() (us since the epoch), user => map()}},
%%              every meta key optional.  Events logged while the node boots
%%              (before the port exists) or after the port closed go to
%%              stderr instead.
%%
%% End of stdin means Python is gone: the helper halts at once, without
%% flushing anything (there is no one left to read it), so no orphan BEAM
%% is left behind.  A write error on the channel halts it too.
%%
%% == Why a plain proc_lib loop ==
%%
%% The hot path is one port message per call: match the header, look the
%% worker up, forward.  A gen_server would add a callback dispatch, a
%% try/catch and a state tuple rebuild per message for no benefit here, so
%% this is an OTP special process (proc_lib + sys): it answers system
%% messages, shows its state in sys:get_state/1, and is started and shut
%% down by py_sup like any worker.  Handlers do not reply through this
%% process: they write their replies to the port themselves, so replies
%% never queue behind incoming requests.
-module(py_coordinator).

-include("py_protocol.hrl").

%% API.
-export([start_link/0]).

%% proc_lib.
-export([init/1]).

%% sys.
-export([system_continue/3]).
-export([system_terminate/4]).
-export([system_code_change/4]).

%% Port busy limits: disabled.  With busy limits the port becomes "busy"
%% when more than High bytes wait in its output queue (Python has not read
%% them yet), and every writer is suspended until the queue drains.  On
%% OTP 25.2 (erts 13.1.5) that busy state can lose the fd driver's
%% write-ready wake-up: a whole reply stays in the queue, the pipe to
%% Python is empty, every process is idle, and nothing moves until some
%% unrelated event wakes a scheduler -- forever on an otherwise idle helper.
%% Measured with 8 workers fetching 200 KB replies (the check
%% replies_never_stall in test/py_port_test.escript does the same):
%% default limits (4/8 KiB) stalled in 0-7 of 25-30 runs; 256 KiB/1 MiB
%% never with 200 KB replies but 1 in 30 runs with 2 MB ones; disabled in
%% none of 180 runs (replies of 2 KB to 5 MB, 4 to 16 workers), with the
%% same throughput within noise.  So the port never goes busy.  Its output
%% queue is still bounded: replies by the number of Python workers (each
%% has one call in flight), output by py_user, which waits for the queue
%% to drain below its own limit before it answers the printing process.
-define(BUSY_LIMITS, disabled).

-record(state, {
    parent :: pid(),
    port :: port(),
    %% Worker => {Handler, Monitor, Seq of the last frame given to it}
    workers = #{} :: #{non_neg_integer() => {pid(), reference(), non_neg_integer()}},
    %% Handler => Worker, to find the worker when a handler goes down
    handlers = #{} :: #{pid() => non_neg_integer()},
    %% Async calls in flight: {Worker, Seq} => {Pid, Monitor}, and back
    calls = #{} :: #{{non_neg_integer(), non_neg_integer()} => {pid(), reference()}},
    monitors = #{} :: #{reference() => {non_neg_integer(), non_neg_integer()}},
    %% Open mailboxes: Id => process (for CREDIT), and monitor => Id
    mailboxes = #{} :: #{pos_integer() => pid()},
    mailbox_monitors = #{} :: #{reference() => pos_integer()}
}).

%% API.

-spec start_link() -> {ok, pid()}.
start_link() ->
    proc_lib:start_link(?MODULE, init, [self()]).

%% proc_lib.

-spec init(pid()) -> no_return().
init(Parent) ->
    %% Trapping exits: the supervisor's shutdown arrives as a message, and a
    %% process some user function linked to this one cannot take the channel
    %% down when it dies.  The port's own exit (a write error: Python is
    %% gone) arrives as a message too and halts the node.
    process_flag(trap_exit, true),
    register(?MODULE, self()),
    Port = open_port({fd, 0, 1}, [{packet, 4}, binary, eof,
                                  {busy_limits_port, ?BUSY_LIMITS}]),
    %% HELLO first, then make the port visible: py_user writes output only
    %% once py_port exists, so HELLO is always the first frame Python reads.
    true = port_command(Port, [<<?K_HELLO, 0:32, 0:32>>, term_to_binary(hello())]),
    %% For py:call_python/2,3 and cast_python/2, which write CALLBACK frames
    %% from the calling process: a lookup without copying and without the
    %% name py_port, which a user function may unregister.  Put once, so it
    %% never costs the global scan an update of a persistent term makes.
    ok = persistent_term:put({py, port}, Port),
    true = register(py_port, Port),
    %% Output printed during boot was buffered by py_user; let it flush now.
    %% py_user, like the handlers, keeps the port itself: the name py_port
    %% is only for finding it, and a user function may unregister it.
    case whereis(user) of
        undefined -> ok;
        User -> User ! {'$py_port', Port}, ok
    end,
    proc_lib:init_ack(Parent, {ok, self()}),
    loop(#state{parent = Parent, port = Port}).

%% sys.

-spec system_continue(pid(), [sys:dbg_opt()], #state{}) -> no_return().
system_continue(_Parent, _Debug, State) ->
    loop(State).

-spec system_terminate(term(), pid(), [sys:dbg_opt()], #state{}) -> no_return().
system_terminate(Reason, _Parent, _Debug, _State) ->
    exit(Reason).

-spec system_code_change(#state{}, module(), term(), term()) -> {ok, #state{}}.
system_code_change(State, _Module, _OldVsn, _Extra) ->
    {ok, State}.

%% Internal.

loop(State = #state{port = Port, parent = Parent}) ->
    receive
        {Port, {data, <<Kind, Worker:32, Seq:32, _/binary>> = Frame}} ->
            loop(frame(Kind, Worker, Seq, Frame, State));
        {'DOWN', Monitor, process, Pid, Reason} ->
            loop(down(Monitor, Pid, Reason, State));
        {'$py_open_mailbox', ReplyTo, Id, Name} when is_reference(ReplyTo) ->
            loop(open_mailbox(ReplyTo, Id, Name, State));
        {Port, eof} ->
            %% Python closed our stdin: it is gone or stopping us.  Halt now;
            %% flushing output nobody will read could only delay the exit.
            erlang:halt(0, [{flush, false}]);
        {Port, {data, Short}} ->
            %% Shorter than a header: a bug on the Python side.  Say so on
            %% stderr and go on; there is no Worker to answer to.
            logger:warning("py: dropped a malformed frame of ~b bytes", [byte_size(Short)]),
            loop(State);
        {'EXIT', Port, Reason} ->
            %% The channel failed (EPIPE: Python closed its end).  Written
            %% straight to fd 2: logger may buffer, and halt does not wait.
            catch io:format(standard_error,
                            "erlang helper: the channel to Python failed: ~tp~n", [Reason]),
            erlang:halt(1, [{flush, false}]);
        {'EXIT', Parent, Reason} ->
            exit(Reason);
        {system, From, Request} ->
            sys:handle_system_msg(Request, From, Parent, ?MODULE, [], State);
        _Other ->
            %% A user function may send anything to this process (or fake a
            %% port message from another port); it must not take the channel
            %% down, nor fill this mailbox.
            loop(State)
    end.

frame(Kind, Worker, Seq, Frame, State = #state{calls = Calls, monitors = Monitors})
  when Kind >= ?K_CALL_ASYNC, Kind =< ?K_EVAL_ASYNC ->
    {Pid, Monitor} = py_handler:start_call(Frame),
    State#state{calls = Calls#{{Worker, Seq} => {Pid, Monitor}},
                monitors = Monitors#{Monitor => {Worker, Seq}}};
frame(?K_CANCEL, Worker, Seq, _Frame, State = #state{calls = Calls})
  when is_map_key({Worker, Seq}, Calls) ->
    #{{Worker, Seq} := {Pid, Monitor}} = Calls,
    warn_lost_state(Pid, async),
    exit(Pid, kill),
    erlang:demonitor(Monitor, [flush]),
    forget_call(Monitor, State);
frame(?K_CANCEL, Worker, Seq, _Frame, State = #state{workers = Workers}) ->
    case Workers of
        #{Worker := {Pid, Monitor, Seq}} ->
            %% What the handler owns dies with it: say so (cancel path only).
            ok = warn_lost_state(Pid, handler),
            %% kill, not a softer signal: the call may be stuck anywhere,
            %% trapping exits or in a receive that never ends.
            exit(Pid, kill),
            erlang:demonitor(Monitor, [flush]),
            forget(Worker, Pid, State);
        _ ->
            %% Unknown worker, or a Seq the handler was never given (or that
            %% a later frame has superseded): nothing to abandon.
            State
    end;
frame(?K_CALLBACK_REPLY, _Worker, _Seq, <<_:9/binary, Payload/binary>>, State) ->
    try binary_to_term(Payload) of
        {Alias, Tag, Value} when is_reference(Alias), (Tag =:= ok orelse Tag =:= error) ->
            Alias ! {Alias, Tag, Value};
        {Alias, _, _} when not is_reference(Alias) ->
            ok;
        Other ->
            logger:warning("py: dropped a CALLBACK_REPLY frame whose payload is not "
                           "{Alias, ok | error, Value}: ~tP", [Other, 10])
    catch
        error:badarg ->
            logger:warning("py: dropped a CALLBACK_REPLY frame whose payload does not decode")
    end,
    State;
frame(?K_SEND, Worker, Seq, <<_:9/binary, Payload/binary>>, State) ->
    Result = try binary_to_term(Payload) of
                 {Dest, Msg} -> send(Dest, Msg);
                 _ -> {error, "the SEND payload is not {Dest, Msg}"}
             catch
                 error:badarg -> {error, "the SEND payload does not decode"}
             end,
    case {Worker, Result} of
        {0, _} ->
            ok;
        {_, ok} ->
            true = port_command(State#state.port, [<<?K_OK, Worker:32, Seq:32>>,
                                                   term_to_binary(ok)]);
        {_, {error, Why}} ->
            Message = unicode:characters_to_binary(["bad argument: ", Why]),
            true = port_command(State#state.port, [<<?K_ERROR, Worker:32, Seq:32>>,
                                                   term_to_binary({error, badarg, [], Message})])
    end,
    State;
frame(?K_CREDIT, _Worker, Id, <<_:9/binary, Payload/binary>>, State) ->
    case State#state.mailboxes of
        #{Id := Pid} ->
            try binary_to_term(Payload) of
                {Msgs, Bytes} when is_integer(Msgs), Msgs >= 0, is_integer(Bytes), Bytes >= 0 ->
                    Pid ! {'$py_credit', self(), Msgs, Bytes};
                Other ->
                    logger:warning("py: dropped a CREDIT frame for mailbox ~b whose payload "
                                   "is not {Msgs, Bytes}: ~tP", [Id, Other, 10])
            catch
                error:badarg ->
                    logger:warning("py: dropped a CREDIT frame for mailbox ~b whose payload "
                                   "does not decode", [Id])
            end;
        _ ->
            %% The mailbox is gone (its MAILBOX_DOWN is on its way to
            %% Python, or read): credit for it means nothing now.
            ok
    end,
    State;
frame(_Kind, Worker, Seq, Frame, State = #state{workers = Workers}) ->
    case Workers of
        #{Worker := {Pid, Monitor, _}} ->
            Pid ! {'$py_frame', Frame},
            State#state{workers = Workers#{Worker := {Pid, Monitor, Seq}}};
        _ ->
            {Pid, Monitor} = py_handler:start_monitor(State#state.port),
            Pid ! {'$py_frame', Frame},
            State#state{workers = Workers#{Worker => {Pid, Monitor, Seq}},
                        handlers = (State#state.handlers)#{Pid => Worker}}
    end.

%% SEND's Dest ! Msg: ok, or {error, Why} for badarg.
send(Pid, Msg) when is_pid(Pid) ->
    Pid ! Msg,
    ok;
send(Name, Msg) when is_binary(Name) ->
    case py:whereis(Name) of
        Pid when is_pid(Pid) ->
            Pid ! Msg,
            ok;
        undefined ->
            Text = case unicode:characters_to_binary(Name) of
                       Utf8 when is_binary(Utf8) -> Utf8;
                       _ -> io_lib:format("~w", [Name])
                   end,
            {error, ["no process is registered as ", Text]}
    end;
send({Name, Node}, Msg) when (is_atom(Name) orelse is_binary(Name)),
                             (is_atom(Node) orelse is_binary(Node)) ->
    try {atom(Name), atom(Node)} of
        {RegName, Node1} when Node1 =:= node() ->
            case erlang:whereis(RegName) of
                Port when is_port(Port) -> ok;
                _ -> {RegName, Node1} ! Msg, ok
            end;
        Dest ->
            Dest ! Msg,
            ok
    catch
        error:_ ->
            {error, io_lib:format("not a name and node: ~tP", [{Name, Node}, 5])}
    end;
send(Dest, _Msg) ->
    {error, io_lib:format("not a pid, a name or {Name, Node}: ~tP", [Dest, 5])}.

%% (binary_to_atom fails on a binary that is not UTF-8, or too long.)
atom(Name) when is_atom(Name) -> Name;
atom(Name) -> binary_to_atom(Name, utf8).

%% py:open_mailbox/2's request: spawns and monitors the mailbox process,
%% registers it if asked, and answers ReplyTo with {ok, Pid} or
%% {error, badarg}.  A name that cannot be registered (taken, or not valid)
%% makes the caller fail, and the process that was to have it is killed
%% before anyone knows it, so Python never hears of it.
open_mailbox(ReplyTo, Id, Name, State = #state{mailboxes = Mailboxes,
                                               mailbox_monitors = Monitors})
  when is_integer(Id), Id > 0, Id =< 16#FFFFFFFF, not is_map_key(Id, Mailboxes),
       (is_binary(Name) orelse Name =:= undefined) ->
    {Pid, Monitor} = py_mailbox:start_monitor(State#state.port, Id),
    Registered = Name =:= undefined orelse
                     try register(binary_to_atom(Name, utf8), Pid)
                     catch error:_ -> false
                     end,
    case Registered of
        true ->
            ReplyTo ! {ReplyTo, {ok, Pid}},
            State#state{mailboxes = Mailboxes#{Id => Pid},
                        mailbox_monitors = Monitors#{Monitor => Id}};
        false ->
            exit(Pid, kill),
            erlang:demonitor(Monitor, [flush]),
            ReplyTo ! {ReplyTo, {error, badarg}},
            State
    end;
open_mailbox(ReplyTo, _Id, _Name, State) ->
    ReplyTo ! {ReplyTo, {error, badarg}},
    State.

%% A mailbox process is gone: say so to Python, after the MESSAGE frames
%% it wrote itself (each was in the port before it could die).
down(Monitor, _Pid, Reason, State = #state{mailbox_monitors = Monitors})
  when is_map_key(Monitor, Monitors) ->
    #{Monitor := Id} = Monitors,
    true = port_command(State#state.port, [<<?K_MAILBOX_DOWN, 0:32, Id:32>>,
                                           term_to_binary(Reason)]),
    State#state{mailboxes = maps:remove(Id, State#state.mailboxes),
                mailbox_monitors = maps:remove(Monitor, Monitors)};
%% A handler died without being cancelled: it was killed by someone else,
%% or a process linked to it died, or it called exit/2 on itself.  Whatever
%% call it was running will never be answered by it, so answer it here.
down(Monitor, _Pid, Reason, State = #state{monitors = Monitors})
  when is_map_key(Monitor, Monitors) ->
    %% An async call's process: it exits with its reply (see
    %% py_handler:start_call/1), else it was killed or taken down by a link
    %% before it could reply.
    Key = maps:get(Monitor, Monitors),
    case {Reason, Key} of
        {{'$py_reply', [<<Kind, Worker:32, Seq:32>>, Body] = Reply}, {Worker, Seq}}
          when is_binary(Body), (Kind =:= ?K_OK orelse Kind =:= ?K_ERROR) ->
            %% (Matched against the call's own key: an exit signal sent to
            %% the process from elsewhere cannot make this write a frame.)
            true = port_command(State#state.port, Reply);
        {_, {W, S}} ->
            Error = term_to_binary({exit, Reason, []}),
            true = port_command(State#state.port, [<<?K_ERROR, W:32, S:32>>, Error])
    end,
    forget_call(Monitor, State);
down(Monitor, Pid, Reason, State = #state{handlers = Handlers, workers = Workers}) ->
    Worker = maps:get(Pid, Handlers, none),
    case Workers of
        #{Worker := {Pid, Monitor, Seq}} ->
            Error = term_to_binary({exit, Reason, []}),
            true = port_command(State#state.port, [<<?K_ERROR, Worker:32, Seq:32>>, Error]),
            forget(Worker, Pid, State);
        _ ->
            %% Not one of our monitors: a user function may send a fake
            %% 'DOWN' naming a live handler; that must not orphan it.
            State
    end.

forget_call(Monitor, State = #state{calls = Calls, monitors = Monitors}) ->
    Key = maps:get(Monitor, Monitors),
    State#state{calls = maps:remove(Key, Calls), monitors = maps:remove(Monitor, Monitors)}.

%% A handler about to be killed by a cancel takes with it the ETS tables it
%% owns (unless they have an heir) and sends an exit signal to the
%% processes linked to it: a server started with start_link in a call
%% stops.  That must not pass silently: later calls would only fail with
%% badarg or noproc.  So before the kill, a warning names them; it reaches
%% Python's logging (py_log_h).  Handlers are spawned without links, so
%% any link is one the user's code made.  Only ever on the cancel path:
%% the scan of every table costs nothing on a call.
warn_lost_state(Pid, What) ->
    Tables = [T || T <- ets:all(),
                   ets:info(T, owner) =:= Pid,
                   ets:info(T, heir) =:= none],
    Links = case erlang:process_info(Pid, links) of
                {links, L} -> L;
                undefined -> []
            end,
    case {Tables, Links} of
        {[], []} ->
            ok;
        _ ->
            Whose = case What of
                        handler -> "a cancelled call's handler ~p was killed, and with it "
                                   "what calls on its thread had made";
                        async -> "a cancelled async call's process ~p was killed, and "
                                 "with it what the call had made"
                    end,
            logger:warning(
              "py: " ++ Whose ++ ": ~ts. Keep such state with "
              "py:keep/1, an unlinked server or an ETS heir (see the README).",
              [Pid, lists:join("; ", lost_tables(Tables) ++ lost_links(Links))],
              #{domain => [py], py_tables => Tables, py_links => Links}),
            ok
    end.

lost_tables([]) ->
    [];
lost_tables(Tables) ->
    [["ETS tables deleted: ", lists:join(", ", [table(T) || T <- Tables])]].

lost_links([]) ->
    [];
lost_links(Links) ->
    [["linked processes sent exit signal killed: ", lists:join(", ", [linked(L) || L <- Links])]].

%% "cache" for a named table, "cache #Ref<...>" for an unnamed one.
table(T) when is_atom(T) ->
    io_lib:format("~tw", [T]);
table(T) ->
    io_lib:format("~tw ~w", [ets:info(T, name), T]).

%% "<0.95.0> my_server (my_server:init/1)", "port #Port<0.7>": pid, registered name, and the
%% initial call as proc_lib records it (gen_server's real module, not
%% proc_lib:init_p/5).
linked(Pid) when is_pid(Pid), node(Pid) =:= node() ->
    Name = case erlang:process_info(Pid, registered_name) of
               {registered_name, N} -> [" ", io_lib:format("~tw", [N])];
               _ -> ""
           end,
    Call = case catch proc_lib:translate_initial_call(Pid) of
               {M, F, A} when is_atom(M), is_atom(F), is_integer(A) ->
                   io_lib:format(" (~tw:~tw/~w)", [M, F, A]);
               _ ->
                   ""
           end,
    [pid_to_list(Pid), Name, Call];
linked(Pid) when is_pid(Pid) ->
    pid_to_list(Pid);
linked(Port) when is_port(Port) ->
    ["port ", erlang:port_to_list(Port)];
linked(Other) ->
    io_lib:format("~w", [Other]).

forget(Worker, Pid, State = #state{workers = Workers, handlers = Handlers}) ->
    State#state{workers = maps:remove(Worker, Workers),
                handlers = maps:remove(Pid, Handlers)}.

hello() ->
    #{protocol => ?PY_PROTOCOL_VERSION,
      otp_release => list_to_binary(erlang:system_info(otp_release)),
      erts_version => list_to_binary(erlang:system_info(version)),
      node => node(),
      os_pid => list_to_integer(os:getpid())}.
