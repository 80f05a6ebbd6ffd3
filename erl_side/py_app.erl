%% The py application: the helper's top supervisor plus logger set-up
%% (stderr while the node boots, then Python's logging through py_log_h).
-module(py_app).
-behaviour(application).

%% API.
-export([start/2]).
-export([stop/1]).

%% API.

-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) ->
    Default = log_to_stderr(),
    case py_sup:start_link() of
        {ok, Sup} ->
            ok = log_to_python(Default),
            {ok, Sup};
        Error ->
            Error
    end.

-spec stop(term()) -> ok.
stop(_State) ->
    ok.

%% Internal.

%% Logger's default handler writes to standard_io, i.e. to `user`, which in
%% the helper is py_user: log events would become OUTPUT frames printed on
%% Python's sys.stdout.  Logs belong on stderr (Python forwards the helper's
%% stderr and keeps its tail for error messages), so the default handler is
%% replaced by one of type standard_error with the same level, filters and
%% formatter.  A handler the user configured elsewhere (a file, or removed)
%% is left alone.  The handler type cannot be changed in place, hence
%% remove + add.  This handler only serves while the node boots: once the
%% channel port exists, log_to_python/1 replaces it.  Returns the settings
%% kept, or none when the default handler is not the standard one.
-spec log_to_stderr() -> logger:handler_config() | none.
log_to_stderr() ->
    case logger:get_handler_config(default) of
        {ok, #{module := logger_std_h, config := #{type := standard_io}} = Config} ->
            Keep = maps:with([level, filter_default, filters, formatter], Config),
            ok = logger:remove_handler(default),
            ok = logger:add_handler(default, logger_std_h,
                                    Keep#{config => #{type => standard_error}}),
            Keep;
        _ ->
            none
    end.

%% The coordinator has opened the channel port (and registered it as
%% py_port before acknowledging its start): from now on log events go to
%% Python's logging as LOG frames (py_log_h), at the level the default
%% handler had.  Unlike OTP's default handler, which keeps only events of
%% no domain or of domain [otp | _], events of any domain are passed on
%% (Python names its logger after the domain, and filtering is best done
%% there); only events of a remote process's group leader are still
%% stopped, as the default handler does, since they belong to that node.
%% The new handler is added before the stderr one is removed, so no event
%% falls between the two.  A default
%% handler configured otherwise (kernel's `logger` parameter) is the user's
%% choice and is left alone, with no handler added.
-spec log_to_python(logger:handler_config() | none) -> ok.
log_to_python(none) ->
    ok;
log_to_python(Keep) ->
    case whereis(py_port) of
        Port when is_port(Port) ->
            ok = logger:add_handler(
                   py_log, py_log_h,
                   #{level => maps:get(level, Keep, all),
                     filter_default => log,
                     filters => [{remote_gl, {fun logger_filters:remote_gl/2, stop}}],
                     formatter => py_log_h:formatter(),
                     config => #{port => Port}}),
            ok = logger:remove_handler(default);
        _ ->
            ok
    end.
