%% The py application: the helper's top supervisor plus logger set-up.
-module(py_app).
-behaviour(application).

%% API.
-export([start/2]).
-export([stop/1]).

%% API.

-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_Type, _Args) ->
    ok = log_to_stderr(),
    py_sup:start_link().

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
%% remove + add.
-spec log_to_stderr() -> ok.
log_to_stderr() ->
    case logger:get_handler_config(default) of
        {ok, #{module := logger_std_h, config := #{type := standard_io}} = Config} ->
            Keep = maps:with([level, filter_default, filters, formatter], Config),
            ok = logger:remove_handler(default),
            ok = logger:add_handler(default, logger_std_h,
                                    Keep#{config => #{type => standard_error}});
        _ ->
            ok
    end.
