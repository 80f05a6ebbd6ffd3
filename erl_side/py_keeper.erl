%% The keeper: a long-lived home for state made from Python (py:keep/1).
%%
%% What a call creates belongs to the process that runs it, the worker's
%% handler: an ETS table it makes is owned by the handler, a server it
%% starts with start_link is linked to it.  A cancelled call (timeout=,
%% Ctrl-C) kills that handler, and the table and the linked servers go with
%% it.  py:keep(Fun) runs Fun in this process instead, which lives as long
%% as the helper: tables Fun makes are owned here, processes Fun links to
%% are linked here, and no cancel reaches them.
%%
%% It traps exits, so that a kept server's crash (the exit signal of a
%% linked process) does not take it down; the crash itself is logged by
%% the server's own crash report.  Fun must return soon: the keeper runs one
%% Fun at a time, and a Fun that calls py:keep/1 itself (directly or from a
%% server's init) would wait for itself forever.
-module(py_keeper).
-behaviour(gen_server).

%% API.
-export([start_link/0]).
-export([keep/1]).

%% gen_server.
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).

%% API.

-spec start_link() -> {ok, pid()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% Runs Fun in the keeper and returns its value, or raises what it raised
%% (in the caller, with Fun's stack trace).
-spec keep(fun(() -> Result)) -> Result.
keep(Fun) when is_function(Fun, 0) ->
    case gen_server:call(?MODULE, {keep, Fun}, infinity) of
        {ok, Result} -> Result;
        {raise, Class, Reason, Stack} -> erlang:raise(Class, Reason, Stack)
    end.

%% gen_server.

-spec init([]) -> {ok, undefined}.
init([]) ->
    process_flag(trap_exit, true),
    {ok, undefined}.

-spec handle_call(term(), gen_server:from(), undefined) ->
          {reply, term(), undefined}.
handle_call({keep, Fun}, _From, State) ->
    Reply = try Fun() of
                Result -> {ok, Result}
            catch
                Class:Reason:Stack -> {raise, Class, Reason, Stack}
            end,
    {reply, Reply, State};
handle_call(_Request, _From, State) ->
    {reply, {raise, error, badarg, []}, State}.

-spec handle_cast(term(), undefined) -> {noreply, undefined}.
handle_cast(_Request, State) ->
    {noreply, State}.

%% 'EXIT' of a kept process (or of anything that linked to the keeper), and
%% stray messages a Fun's code left behind: nothing to do.
-spec handle_info(term(), undefined) -> {noreply, undefined}.
handle_info(_Info, State) ->
    {noreply, State}.
