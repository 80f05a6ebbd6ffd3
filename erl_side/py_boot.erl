%% Entry point of the helper, run by `erl ... -s py_boot start`.
%%
%% The Python side starts the helper as
%%   ERL_CRASH_DUMP_SECONDS=0 erl -noshell -noinput +Bi -pa <ebin>
%%       [-pa <elixir ebin>... -py elixir true] [-pa <dir>...] [user args...]
%%       -user py_user -s py_boot start
%% `-s` takes the plain words after it as arguments, so it comes last;
%% `-user py_user` comes after the user's args because kernel's user_sup
%% lets the last of -user/-noshell/-noinput win.
-module(py_boot).

%% API.
-export([start/0]).

%% API.

%% Starts the py application as permanent: if it ever terminates the node
%% halts and Python sees end of file.  A helper that cannot start says why
%% on stderr (Python keeps its tail for the HelperExited message) and halts
%% with a non-zero status instead of lingering without a channel.
%%
%% With `-py elixir true` (erlang.start(elixir=True), which also puts
%% Elixir's ebin directories on the code path) the elixir application is
%% started first: py sends HELLO when it starts, so no call can arrive
%% before Elixir is ready, and an Elixir that does not start fails the
%% start-up like any other helper that cannot start.
-spec start() -> ok.
start() ->
    try boot() of
        ok ->
            ok;
        {error, App, Reason} ->
            fail(App, Reason)
    catch
        Class:Reason:Stack ->
            fail(py, {Class, Reason, Stack})
    end.

%% Internal.

boot() ->
    %% Loaded first, to read its environment (where `-py elixir true` goes).
    case application:load(py) of
        ok -> ok;
        {error, {already_loaded, py}} -> ok
    end,
    Apps = case application:get_env(py, elixir, false) of
               true -> [{elixir, temporary}, {py, permanent}];
               _ -> [{py, permanent}]
           end,
    start_apps(Apps).

start_apps([]) ->
    ok;
start_apps([{App, Type} | Rest]) ->
    case application:ensure_all_started(App, Type) of
        {ok, _Started} -> start_apps(Rest);
        {error, Reason} -> {error, App, Reason}
    end.

-spec fail(atom(), term()) -> no_return().
fail(App, Reason) ->
    %% standard_error writes to fd 2 synchronously: the text is out before
    %% halt/1 returns.  fd 1 is the channel and must never carry text.
    catch io:format(standard_error,
                    "erlang helper: the ~tw application did not start: ~tp~n",
                    [App, Reason]),
    erlang:halt(3).
