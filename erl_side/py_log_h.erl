%% The logger handler that sends the helper's log events to Python.
%%
%% Installed by py_app once the channel port exists (during boot, logs go to
%% stderr through a standard_error default handler, so nothing is lost
%% before there is a port).  Each event becomes one LOG frame on worker 0:
%%
%%   <<?K_LOG, 0:32, 0:32, (term_to_binary(#{level => Level, msg => Text,
%%                                           meta => Meta}))/binary>>
%%
%% Text is the event formatted by logger_formatter on a single line (the
%% template is the message alone: Python's logging adds time and level), its
%% size bounded by chars_limit and max_size, so a huge report stays small.
%% Meta holds what Python puts on the LogRecord: pid (a binary such as
%% <<"<0.91.0>">>), mfa ({M, F, Arity}), file (a binary), line, domain
%% (a list of atoms), time (microseconds since the epoch), and the event's
%% other simple metadata under user.
%%
%% log/2 runs in the process that logs, so it must never block nor crash
%% (logger removes a handler whose callback crashes).  The port never goes
%% busy (see py_coordinator), so port_command/2 does not block; memory is
%% bounded instead by dropping events while the port's output queue is over
%% ?MAX_QUEUED bytes (Python is not reading).  Dropped events are counted,
%% and the count is reported by a warning with the next event that gets
%% through.  When the port is gone (the coordinator died and the node is
%% going down), events go to stderr, where Python keeps the tail for the
%% HelperExited message.
-module(py_log_h).

-include("py_protocol.hrl").

%% API.
-export([formatter/0]).

%% logger_handler.
-export([adding_handler/1]).
-export([changing_config/3]).
-export([log/2]).

-define(MAX_QUEUED, 4 * 1024 * 1024).

%% Metadata keys sent as fields of their own, or not at all (gl, and
%% logger's own internals).
-define(OWN_KEYS, [pid, mfa, file, line, domain, time, gl, report_cb,
                   error_logger, logger_formatter]).
%% At most this many other metadata entries are sent, each value formatted
%% to at most ?USER_CHARS characters unless it is a number, an atom or a
%% short binary.
-define(MAX_USER_KEYS, 32).
-define(USER_CHARS, 512).

%% API.

%% The formatter the handler is installed with: one line per event, the
%% message only, bounded in size.
-spec formatter() -> {module(), logger:formatter_config()}.
formatter() ->
    {logger_formatter, #{single_line => true,
                         template => [msg],
                         chars_limit => 16384,
                         max_size => 32768}}.

%% logger_handler.

-spec adding_handler(logger:handler_config()) ->
          {ok, logger:handler_config()} | {error, term()}.
adding_handler(Config = #{config := #{port := Port} = Own}) when is_port(Port) ->
    {ok, Config#{config => Own#{dropped => counters:new(1, [write_concurrency])}}};
adding_handler(_Config) ->
    {error, {py_log_h, needs_a_port}}.

%% logger:set_handler_config/2,3 and update_handler_config/2,3 may change
%% the level, filters or formatter; the port and the drop counter stay.
-spec changing_config(set | update, logger:handler_config(), logger:handler_config()) ->
          {ok, logger:handler_config()}.
changing_config(_SetOrUpdate, #{config := Old}, New) ->
    Own = case New of
              #{config := C} when is_map(C) -> C;
              _ -> #{}
          end,
    {ok, New#{config => maps:merge(Own, maps:with([port, dropped], Old))}}.

-spec log(logger:log_event(), logger:handler_config()) -> ok.
log(Event, #{config := #{port := Port, dropped := Dropped}} = Config) ->
    try
        send(Port, payload(Event, Config), Dropped)
    catch
        _:_ -> ok
    end;
log(_Event, _Config) ->
    ok.

%% Internal.

payload(Event = #{level := Level, meta := Meta}, #{formatter := {Formatter, FConfig}}) ->
    #{level => Level,
      msg => text(Formatter:format(Event, FConfig)),
      meta => meta(Meta)}.

text(Chars) ->
    case unicode:characters_to_binary(Chars) of
        Text when is_binary(Text) -> Text;
        {_, Valid, _} -> Valid
    end.

meta(Meta) ->
    Own = maps:fold(fun own/3, #{}, maps:with(?OWN_KEYS, Meta)),
    User = lists:sublist(maps:to_list(maps:without(?OWN_KEYS, Meta)), ?MAX_USER_KEYS),
    case [{K, user_value(V)} || {K, V} <- User, is_atom(K)] of
        [] -> Own;
        Pairs -> Own#{user => maps:from_list(Pairs)}
    end.

own(pid, Pid, Acc) when is_pid(Pid) -> Acc#{pid => list_to_binary(pid_to_list(Pid))};
own(mfa, {M, F, A}, Acc) when is_atom(M), is_atom(F), is_integer(A) -> Acc#{mfa => {M, F, A}};
own(mfa, {M, F, A}, Acc) when is_atom(M), is_atom(F), is_list(A) -> Acc#{mfa => {M, F, length(A)}};
own(file, File, Acc) when is_list(File); is_binary(File) -> Acc#{file => text(File)};
own(line, Line, Acc) when is_integer(Line) -> Acc#{line => Line};
own(domain, Domain, Acc) when is_list(Domain) -> Acc#{domain => [D || D <- Domain, is_atom(D)]};
own(time, Time, Acc) when is_integer(Time) -> Acc#{time => Time};
own(_Key, _Value, Acc) -> Acc.

user_value(V) when is_atom(V); is_number(V) -> V;
user_value(V) when is_binary(V), byte_size(V) =< ?USER_CHARS -> V;
user_value(V) ->
    text(io_lib:format("~0tp", [V], [{chars_limit, ?USER_CHARS}])).

send(Port, Payload, Dropped) ->
    case erlang:port_info(Port, queue_size) of
        {queue_size, Queued} when Queued =< ?MAX_QUEUED ->
            report_dropped(Port, Dropped),
            write(Port, Payload);
        {queue_size, _} ->
            counters:add(Dropped, 1, 1);
        undefined ->
            to_stderr(Payload)
    end.

report_dropped(Port, Dropped) ->
    case counters:get(Dropped, 1) of
        0 ->
            ok;
        N ->
            counters:sub(Dropped, 1, N),
            Text = io_lib:format("py: ~b log events were dropped: Python did not read "
                                 "them fast enough", [N]),
            write(Port, #{level => warning, msg => text(Text),
                          meta => #{pid => list_to_binary(pid_to_list(self())),
                                    domain => [py],
                                    time => os:system_time(microsecond)}})
    end.

write(Port, Payload) ->
    try
        true = port_command(Port, [<<?K_LOG, 0:32, 0:32>>, term_to_binary(Payload)]),
        ok
    catch
        error:badarg -> to_stderr(Payload)
    end.

%% The port is closed: the node is going down.  standard_error writes to
%% fd 2 (never fd 1, the channel).
to_stderr(#{level := Level, msg := Text, meta := Meta}) ->
    Pid = maps:get(pid, Meta, <<>>),
    _ = (catch io:put_chars(standard_error, [$[, atom_to_list(Level), "] ", Pid, " ", Text, $\n])),
    ok.
