%% The helper's `user` io server: standard output as OUTPUT frames.
%%
%% Started instead of OTP's `user` by `erl -user py_user` (kernel's user_sup
%% calls start/0, then waits -- polling every 100 ms -- until `user` is
%% registered, so start/0 registers it before returning).  Every process's
%% default output (io:format/1,2, io:put_chars/1 ...) ends here, directly or
%% relayed by an application master, because `user` is the group leader at
%% the root of every process tree.
%%
%% fd 1 is the channel to Python, so nothing may be written to it except
%% whole frames: output becomes an OUTPUT frame
%%   <<?K_OUTPUT, Worker:32, Seq:32, (term_to_binary({stdout, Utf8}))/binary>>
%% written to the channel port (owned by py_coordinator, registered as
%% py_port) BEFORE the io_reply is sent.  The printing process waits for
%% that reply, so when a handler prints and then replies, the OUTPUT frame
%% reaches the port -- and Python -- before the call's OK/ERROR frame.
%%
%% Worker/Seq name the call that printed: a handler keeps {Worker, Seq} under
%% '$py_call' in its process dictionary while it runs a call, and this
%% server reads it from the requesting process.  Output of any other process
%% (one a call spawned, a timer, the system) gets 0/0 and Python prints it
%% as it arrives.  Reading another process's dictionary copies it; that is
%% paid per output request, never per call (OTP 26 could read one key).
%%
%% Output written before the port exists (while the node boots) is kept, up
%% to ?MAX_BUFFERED bytes, and written once the coordinator has sent HELLO
%% and says so with {'$py_port', Port}.  The port is kept in the state, not
%% looked up by name each time: a user function may unregister py_port.
%%
%% Input: there is none (stdin is the channel); every get_* request
%% answers eof.  Logger's events are not output: py_app sends them to
%% Python's logging, and what the default handler writes here while the
%% node boots goes to stderr (from_logger/1).
-module(py_user).

-include("py_protocol.hrl").

%% API.
-export([start/0]).

%% Internal.
-export([init/0]).

-define(MAX_BUFFERED, 1024 * 1024).

%% The channel port never goes busy (see py_coordinator), so this server
%% makes its own back-pressure: after writing a frame it waits until the
%% port's output queue is below this many bytes before it replies.  A
%% process printing faster than Python reads is slowed down, as it would
%% be by a full pipe, instead of filling the helper's memory.
-define(MAX_QUEUED, 4 * 1024 * 1024).

-record(state, {
    port = undefined :: port() | undefined,
    %% frames waiting for the port, newest first, and their size
    buffer = [] :: [iodata()],
    buffered = 0 :: non_neg_integer(),
    %% reported by getopts only: output is always sent as UTF-8
    encoding = unicode :: unicode | latin1,
    binary = false :: boolean()
}).

%% API.

%% Called by kernel's user_sup, which ignores the return value, waits for
%% the name `user`, and links to it.
-spec start() -> pid().
start() ->
    Pid = spawn(?MODULE, init, []),
    true = register(user, Pid),
    Pid.

%% Internal.

-spec init() -> no_return().
init() ->
    loop(#state{}).

loop(State) ->
    receive
        {io_request, From, ReplyAs, Request} when is_pid(From) ->
            {Reply, State1} = io_request(Request, From, State),
            From ! {io_reply, ReplyAs, Reply},
            loop(State1);
        {'$py_port', Port} when is_port(Port) ->
            loop(connect(Port, State));
        _Other ->
            loop(State)
    end.

%% Never crashes: `user` is not restarted by kernel, and without it every
%% io:format in the node would fail.
io_request(Request, From, State) ->
    try
        request(Request, From, State)
    catch
        _:_ -> {{error, request}, State}
    end.

request({put_chars, Encoding, Chars}, From, State) ->
    put_chars(Encoding, Chars, From, State);
request({put_chars, Encoding, Module, Function, Args}, From, State) ->
    case catch apply(Module, Function, Args) of
        Chars when is_list(Chars); is_binary(Chars) ->
            put_chars(Encoding, Chars, From, State);
        _ ->
            {{error, put_chars}, State}
    end;
request({put_chars, Chars}, From, State) ->
    request({put_chars, latin1, Chars}, From, State);
request({put_chars, Module, Function, Args}, From, State) ->
    request({put_chars, latin1, Module, Function, Args}, From, State);
request({requests, Requests}, From, State) ->
    requests(Requests, From, {ok, State});
request(getopts, _From, State) ->
    {[{binary, State#state.binary}, {encoding, State#state.encoding}], State};
request({setopts, Options}, _From, State) when is_list(Options) ->
    setopts(Options, State);
request({get_geometry, _}, _From, State) ->
    {{error, enotsup}, State};
request(Request, _From, State) when is_tuple(Request) ->
    case element(1, Request) of
        Get when Get =:= get_chars; Get =:= get_line;
                 Get =:= get_until; Get =:= get_password ->
            {eof, State};
        _ ->
            {{error, request}, State}
    end;
request(_Request, _From, State) ->
    {{error, request}, State}.

requests([], _From, {Reply, State}) ->
    {Reply, State};
requests([Request | Rest], From, {_, State}) ->
    case request(Request, From, State) of
        {{error, _}, _} = Error -> Error;
        Ok -> requests(Rest, From, Ok)
    end.

put_chars(Encoding, Chars, From, State) when Encoding =:= unicode; Encoding =:= latin1 ->
    case catch unicode:characters_to_binary(Chars, Encoding, utf8) of
        <<>> ->
            {ok, State};
        Text when is_binary(Text) ->
            case State#state.port =:= undefined andalso from_logger(From) of
                true -> log_to_stderr(Text, State);
                false -> stdout(Text, From, State)
            end;
        _Invalid ->
            {{error, put_chars}, State}
    end;
put_chars(_Encoding, _Chars, _From, State) ->
    {{error, put_chars}, State}.

stdout(Text, From, State) ->
    {Worker, Seq} = call_of(From),
    Frame = [<<?K_OUTPUT, Worker:32, Seq:32>>, term_to_binary({stdout, Text})],
    {ok, write(Frame, State)}.

%% Logger's default handler writes to standard_io, i.e. here, until py_app
%% points it to stderr (before the coordinator opens the port) and then to
%% Python's logging (py_log_h).  What it logs before that -- while kernel
%% and stdlib start, e.g. their progress reports under `-kernel
%% logger_level info` -- is a log, not output: it goes to stderr, never to
%% Python's sys.stdout.  Only checked while there is no port, so it costs
%% nothing once the helper runs.  The writer is the handler process
%% (registered as logger_std_h_default) or, on OTP 25, a process it
%% spawned to do its writes (process_info item parent, new in OTP 25).
from_logger(From) when node(From) =:= node() ->
    is_default_logger(From) orelse
        case catch erlang:process_info(From, parent) of
            {parent, Parent} when is_pid(Parent) -> is_default_logger(Parent);
            _ -> false
        end;
from_logger(_Remote) ->
    false.

is_default_logger(Pid) ->
    erlang:process_info(Pid, registered_name) =:= {registered_name, logger_std_h_default}.

log_to_stderr(Text, State) ->
    _ = (catch io:put_chars(standard_error, Text)),
    {ok, State}.

%% The Python call the requesting process is running, if it is a handler.
call_of(From) when node(From) =:= node() ->
    case erlang:process_info(From, dictionary) of
        {dictionary, Dictionary} ->
            case lists:keyfind('$py_call', 1, Dictionary) of
                {_, {Worker, Seq}} -> {Worker, Seq};
                false -> {0, 0}
            end;
        undefined ->
            {0, 0}
    end;
call_of(_Remote) ->
    {0, 0}.

write(Frame, State = #state{port = undefined}) ->
    %% The coordinator's {'$py_port', Port} may still be on its way.
    case whereis(py_port) of
        Port when is_port(Port) -> write(Frame, connect(Port, State));
        _ -> buffer(Frame, State)
    end;
write(Frame, State = #state{port = Port}) ->
    try port_command(Port, Frame) of
        true ->
            wait_for_queue(Port),
            State
    catch
        error:badarg ->
            %% The port is gone (the node is going down with it): keep the
            %% text, in case a port comes back.
            buffer(Frame, State#state{port = undefined})
    end.

wait_for_queue(Port) ->
    case erlang:port_info(Port, queue_size) of
        {queue_size, Queued} when Queued > ?MAX_QUEUED ->
            receive after 2 -> ok end,
            wait_for_queue(Port);
        _ ->
            ok
    end.

buffer(Frame, State = #state{buffer = Buffer, buffered = Size}) ->
    case Size + iolist_size(Frame) of
        NewSize when NewSize =< ?MAX_BUFFERED ->
            State#state{buffer = [Frame | Buffer], buffered = NewSize};
        _ ->
            State
    end.

%% The port is there: write the buffered frames, oldest first, then write
%% directly.
connect(Port, State = #state{port = undefined, buffer = Buffer}) ->
    lists:foldl(fun write/2, State#state{port = Port, buffer = [], buffered = 0},
                lists:reverse(Buffer));
connect(_Port, State) ->
    State.

setopts(Options, State) ->
    try lists:foldl(fun setopt/2, State, Options) of
        State1 -> {ok, State1}
    catch
        throw:enotsup -> {{error, enotsup}, State}
    end.

setopt(binary, State) -> State#state{binary = true};
setopt(list, State) -> State#state{binary = false};
setopt({binary, Binary}, State) when is_boolean(Binary) -> State#state{binary = Binary};
setopt(latin1, State) -> State#state{encoding = latin1};
setopt(unicode, State) -> State#state{encoding = unicode};
setopt({encoding, latin1}, State) -> State#state{encoding = latin1};
setopt({encoding, Unicode}, State) when Unicode =:= unicode; Unicode =:= utf8 ->
    State#state{encoding = unicode};
setopt(_, _State) -> throw(enotsup).
