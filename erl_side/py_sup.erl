%% Top supervisor of the helper; owner of the function registry.
-module(py_sup).
-behaviour(supervisor).

%% API.
-export([start_link/0]).

%% supervisor.
-export([init/1]).

%% API.

-spec start_link() -> {ok, pid()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

%% supervisor.

-spec init([]) -> {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init([]) ->
    %% The registry of functions callable from Python (py:register_function/2,3),
    %% keyed by binary names so that calling an unknown name never creates an
    %% atom.  Owned here, not by the coordinator (as ranch does with its
    %% tables): the table's life is the application's, independent of any
    %% worker process.  Public because py:register_function/2 writes it from
    %% any process; read_concurrency because every CALL reads it and writes
    %% are rare.
    py_registry = ets:new(py_registry, [set, named_table, public,
                                        {read_concurrency, true}]),
    %% intensity 0: the coordinator is not restarted.  It owns the channel on
    %% fds 0/1; a new port cannot know where the next frame starts if the old
    %% one died half-way through one, and Python would get a second HELLO in
    %% the middle of its calls.  So a coordinator crash takes the supervisor
    %% and the (permanent) application down, the node halts, and Python sees
    %% end of file and reports HelperExited -- a clean, explainable failure.
    %% The keeper (py:keep/1) is started first, so that it is there by the
    %% time the coordinator says HELLO and Python may call.  It catches what
    %% a kept Fun raises and traps exits, so only being killed ends it;
    %% then, as for the coordinator, the helper halts rather than carry on
    %% with the kept state silently gone.
    Flags = #{strategy => one_for_one, intensity => 0, period => 1},
    Keeper = #{id => py_keeper,
               start => {py_keeper, start_link, []},
               restart => permanent,
               shutdown => 5000,
               type => worker,
               modules => [py_keeper]},
    Coordinator = #{id => py_coordinator,
                    start => {py_coordinator, start_link, []},
                    restart => permanent,
                    shutdown => 5000,
                    type => worker,
                    modules => [py_coordinator]},
    {ok, {Flags, [Keeper, Coordinator]}}.
