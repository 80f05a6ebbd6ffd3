%% A mailbox: the Erlang process that stands for a Python mailbox.
%%
%% Python opens one with py:open_mailbox/2 (an APPLY call); the coordinator
%% spawns it, monitors it and knows it by the Id Python chose.  Erlang code
%% sends it messages as to any process, by pid or by the name it was opened
%% with; every message it receives that is not one of its own control
%% messages (below) is for Python, and it writes each one, in arrival order,
%% to the channel itself as one MESSAGE frame
%%   <<?K_MESSAGE, 0:32, Id:32, (term_to_binary(Msg))/binary>>
%% so that a busy mailbox costs the coordinator nothing.
%%
%% Flow control: Python reads messages only as fast as its code takes them,
%% and a sender on this side is never slowed down (a send to a pid cannot
%% block), so without a limit the frames would pile up in Python's memory.
%% So at most ?MAILBOX_WINDOW_MSGS frames, and while fewer than
%% ?MAILBOX_WINDOW_BYTES bytes of payload, are on their way to Python and
%% not yet credited back: Python sends CREDIT {Msgs, Bytes} as its code
%% takes messages, and the coordinator forwards it here.  Messages beyond
%% the window wait in this process's state, in a queue: leaving them in the
%% process mailbox and receiving selectively would scan them all on every
%% receive, quadratic in a backlog.  This loop's receive takes every message
%% as it comes, so the mailbox stays short and each message costs O(1).
%% One message larger than the byte window is still sent when it is next:
%% the check is made before a frame, not on its size.
%%
%% Control messages, matched exactly (any other shape is a message for
%% Python, even one that looks like them):
%%   {'$py_credit', Coordinator, Msgs, Bytes}  from the coordinator only
%%   {'$py_mailbox', ReplyTo, Request}         ReplyTo a reference (an
%%                                             alias), from py's functions;
%%                                             answered ReplyTo ! {ReplyTo, Result}
%%
%% The process is not linked to anything and does not trap exits: it ends
%% when py:close_mailbox/1 sends it the exit signal `closed`, or when it is
%% killed or crashes.  The coordinator's monitor then writes MAILBOX_DOWN
%% with the reason.  The MESSAGE frames this process wrote precede that
%% frame: each port_command is done by the time it returns.
-module(py_mailbox).

-include("py_protocol.hrl").

%% API.
-export([start_monitor/2]).

%% Internal.
-export([init/3]).

-record(state, {
    coordinator :: pid(),
    port :: port(),
    %% <<?K_MESSAGE, 0:32, Id:32>>, the header of every frame
    header :: binary(),
    %% messages waiting for the window, oldest first
    queue = queue:new() :: queue:queue(term()),
    %% frames sent and not yet credited back, and their payload bytes
    out_msgs = 0 :: non_neg_integer(),
    out_bytes = 0 :: non_neg_integer()
}).

%% API.

%% Spawns the mailbox for Id, monitored by the caller, which must be the
%% coordinator: only credit from the caller is trusted.  Plain spawn, as
%% for handlers: its end is reported to Python by the coordinator.
-spec start_monitor(port(), pos_integer()) -> {pid(), reference()}.
start_monitor(Port, Id) ->
    spawn_monitor(?MODULE, init, [self(), Port, Id]).

%% Internal.

-spec init(pid(), port(), pos_integer()) -> no_return().
init(Coordinator, Port, Id) ->
    loop(#state{coordinator = Coordinator, port = Port,
                header = <<?K_MESSAGE, 0:32, Id:32>>}).

loop(State = #state{coordinator = Coordinator}) ->
    receive
        {'$py_credit', Coordinator, Msgs, Bytes} when is_integer(Msgs), is_integer(Bytes) ->
            #state{out_msgs = OutMsgs, out_bytes = OutBytes} = State,
            %% Python never credits more than it got; should it, the window
            %% must not open wider than its size.
            loop(drain(State#state{out_msgs = max(0, OutMsgs - Msgs),
                                   out_bytes = max(0, OutBytes - Bytes)}));
        {'$py_mailbox', ReplyTo, {monitor, Target}} when is_reference(ReplyTo) ->
            ReplyTo ! {ReplyTo, monitor_target(Target)},
            loop(State);
        {'$py_mailbox', ReplyTo, {monitor_node, Node}} when is_reference(ReplyTo) ->
            ReplyTo ! {ReplyTo, node_monitor(Node, true)},
            loop(State);
        {'$py_mailbox', ReplyTo, {demonitor_node, Node}} when is_reference(ReplyTo) ->
            ReplyTo ! {ReplyTo, node_monitor(Node, false)},
            loop(State);
        {'$py_mailbox', ReplyTo, {demonitor, Ref}} when is_reference(ReplyTo), is_reference(Ref) ->
            State1 = demonitor_target(Ref, State),
            ReplyTo ! {ReplyTo, ok},
            loop(State1);
        Msg ->
            loop(deliver(Msg, State))
    end.

%% A new message: written now if nothing waits before it and the window
%% allows, else queued.
deliver(Msg, State = #state{queue = Queue}) ->
    case queue:is_empty(Queue) andalso open(State) of
        true -> write(Msg, State);
        false -> State#state{queue = queue:in(Msg, Queue)}
    end.

%% Writes queued messages while the window allows.
drain(State = #state{queue = Queue}) ->
    case open(State) andalso queue:out(Queue) of
        {{value, Msg}, Queue1} -> drain(write(Msg, State#state{queue = Queue1}));
        _ -> State
    end.

open(#state{out_msgs = OutMsgs, out_bytes = OutBytes}) ->
    OutMsgs < ?MAILBOX_WINDOW_MSGS andalso OutBytes < ?MAILBOX_WINDOW_BYTES.

write(Msg, State = #state{port = Port, header = Header,
                          out_msgs = OutMsgs, out_bytes = OutBytes}) ->
    Payload = term_to_binary(Msg),
    true = port_command(Port, [Header, Payload]),
    State#state{out_msgs = OutMsgs + 1, out_bytes = OutBytes + byte_size(Payload)}.

%% This process monitors Target, so that the 'DOWN' is one more message
%% for Python.  A binary name that is no atom cannot be registered: the
%% 'DOWN' erlang:monitor/2 would give at once for an unregistered name is
%% made here, without creating the atom.
monitor_target(Pid) when is_pid(Pid) ->
    {ok, erlang:monitor(process, Pid)};
monitor_target(Name) when is_atom(Name) ->
    {ok, erlang:monitor(process, Name)};
monitor_target(Name) when is_binary(Name) ->
    try binary_to_existing_atom(Name, utf8) of
        Atom -> {ok, erlang:monitor(process, Atom)}
    catch
        error:badarg ->
            Ref = make_ref(),
            self() ! {'DOWN', Ref, process, {Name, node()}, noproc},
            {ok, Ref}
    end;
monitor_target({Name, Node}) ->
    try {ok, erlang:monitor(process, {to_atom(Name), to_atom(Node)})}
    catch error:_ -> {error, badarg}
    end;
monitor_target(_) ->
    {error, badarg}.

%% With Flag true, this process monitors Node, so that {nodedown, Node} is
%% one more message for Python.  erlang:monitor_node/2 connects first if
%% need be (this process waits for that, as net_kernel:connect_node/1
%% would), and an unreachable node gives its nodedown at once.  With Flag
%% false, one such monitor is removed (none there: nothing happens); a
%% nodedown that has already arrived is not taken back, as in Erlang.
%% Either way, without distribution it raises notalive.
node_monitor(Node, Flag) when is_atom(Node); is_binary(Node) ->
    try erlang:monitor_node(to_atom(Node), Flag) of
        true -> {ok, ok}
    catch error:Reason -> {error, Reason}
    end;
node_monitor(_, _) ->
    {error, badarg}.

%% Node names are atoms anyway, and a remote name cannot be checked here.
to_atom(Name) when is_atom(Name) -> Name;
to_atom(Name) when is_binary(Name) -> binary_to_atom(Name, utf8).

%% [flush] drops a 'DOWN' still in the process mailbox; one that already
%% fired (or a made-up one) may be in the queue instead, so the queue is
%% searched then -- only then, it costs O(n).  One already written to the
%% channel cannot be recalled.
demonitor_target(Ref, State = #state{queue = Queue}) ->
    case erlang:demonitor(Ref, [flush, info]) of
        true ->
            State;
        false ->
            State#state{queue = queue:filter(fun({'DOWN', R, _, _, _}) -> R =/= Ref;
                                                (_) -> true
                                             end, Queue)}
    end.
