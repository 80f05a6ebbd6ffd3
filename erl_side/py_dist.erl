%% Distribution of the helper, started at run time (erlang.start(node=...)).
%%
%% The Python side starts the helper without -sname/-name and without
%% -setcookie, then calls start/6 over the channel once the helper has said
%% hello: the cookie so travels on the helper's stdin, never in its argv or
%% environment, which other users of the machine can read
%% (/proc/PID/cmdline).  Python makes sure that epmd runs before it calls
%% (net_kernel, unlike erl -sname, does not start one).
-module(py_dist).

%% API.
-export([start/6]).
-export([epmd_path/0]).

%% API.

%% Starts distribution as Name (an atom: a short name such as py or py@host,
%% or a long name py@host.domain, as NameDomain says), listening on
%% 127.0.0.1 only when Loopback is true, then sets the cookie (a binary;
%% default: kernel's auth has read ~/.erlang.cookie, creating it if need
%% be, as for erl -sname).
%% TickTime is net_ticktime in seconds, or default for OTP's.  Returns the
%% node's name, or {error, Reason}: {name_in_use, Name} when epmd already
%% knows a node of that name, else what net_kernel:start/2 returned.
-spec start(atom(), shortnames | longnames, boolean(), boolean(),
            pos_integer() | default, binary() | default) -> node() | {error, term()}.
start(Name, NameDomain, Loopback, Hidden, TickTime, Cookie) ->
    case Loopback of
        %% Read by inet_tcp_dist when net_kernel opens its listen socket:
        %% it must be set before.
        true -> ok = application:set_env(kernel, inet_dist_use_interface, {127, 0, 0, 1});
        false -> ok
    end,
    case name_in_use(Name) of
        true ->
            {error, {name_in_use, Name}};
        false ->
            Opts0 = #{name_domain => NameDomain, hidden => Hidden},
            Opts = case TickTime of
                       default -> Opts0;
                       _ -> Opts0#{net_ticktime => TickTime}
                   end,
            case net_kernel:start(Name, Opts) of
                {ok, _Pid} when Cookie =:= default ->
                    node();
                {ok, _Pid} ->
                    true = erlang:set_cookie(binary_to_atom(Cookie, utf8)),
                    node();
                {error, Reason} ->
                    {error, Reason}
            end
    end.

%% The epmd executable of the running emulator: <root>/erts-<vsn>/bin/epmd,
%% as a binary, or false when there is none there.
-spec epmd_path() -> binary() | false.
epmd_path() ->
    Path = filename:join([code:root_dir(), "erts-" ++ erlang:system_info(version),
                          "bin", "epmd"]),
    case filelib:is_regular(Path) of
        true -> unicode:characters_to_binary(Path);
        false -> false
    end.

%% Internal.

%% Whether epmd on this host already has a node named like Name (its part
%% before the @): net_kernel would fail with a long supervisor report that
%% does not say so plainly.  A helper that was just killed and is started
%% again may find its old registration still there for a moment (epmd
%% drops it when it sees the old connection close): the name counts as in
%% use only if it still is after a second.
name_in_use(Name) ->
    [Short | _] = string:split(atom_to_list(Name), "@"),
    name_in_use(Short, 10).

name_in_use(Short, Tries) ->
    InUse = case erl_epmd:names() of
                {ok, Names} -> lists:keymember(Short, 1, Names);
                _ -> false
            end,
    case InUse of
        true when Tries > 1 ->
            timer:sleep(100),
            name_in_use(Short, Tries - 1);
        _ ->
            InUse
    end.
