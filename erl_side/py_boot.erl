%% Entry point of the helper, run by `erl ... -s py_boot start`.
%%
%% The Python side starts the helper as
%%   ERL_CRASH_DUMP_SECONDS=0 erl -noshell -noinput +Bi -pa <ebin>
%%       [-pa <dir>...] [user args...] -user py_user -s py_boot start
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
-spec start() -> ok.
start() ->
    try application:ensure_all_started(py, permanent) of
        {ok, _Started} ->
            ok;
        {error, Reason} ->
            fail(Reason)
    catch
        Class:Reason:Stack ->
            fail({Class, Reason, Stack})
    end.

%% Internal.

-spec fail(term()) -> no_return().
fail(Reason) ->
    %% standard_error writes to fd 2 synchronously: the text is out before
    %% halt/1 returns.  fd 1 is the channel and must never carry text.
    catch io:format(standard_error,
                    "erlang helper: the py application did not start: ~tp~n",
                    [Reason]),
    erlang:halt(3).
