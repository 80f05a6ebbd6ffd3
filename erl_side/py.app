%% The helper BEAM of the Python package `erlang`.  Started by
%% `-s py_boot start` as a permanent application: if it dies the node halts,
%% which Python sees as end of file on the channel.
%%
%% `compiler` is not listed although py:load_source/2 uses it: it is a
%% library application (no processes), its modules load on first use, and
%% starting it here would only add to the helper's start-up time.
%%
%% `vsn` is filled in by setup.py with the package's version (from
%% erlang_module/_version.py) when it copies this file into the ebin.
{application, py,
 [{description, "Runs Erlang functions for the Python package erlang"},
  {vsn, "dev"},
  {modules, [py, py_app, py_boot, py_coordinator, py_dist, py_error, py_handler, py_keeper,
             py_log_h, py_mailbox, py_sup, py_user]},
  {registered, [py_sup, py_coordinator, py_keeper]},
  {applications, [kernel, stdlib]},
  {mod, {py_app, []}},
  %% elixir: true when started by erlang.start(elixir=True) (`-py elixir
  %% true`): py_boot starts Elixir first, py_error words errors as Elixir.
  {env, [{elixir, false}]}]}.
