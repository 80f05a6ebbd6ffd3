%% The helper BEAM of the Python package `erlang`.  Started by
%% `-s py_boot start` as a permanent application: if it dies the node halts,
%% which Python sees as end of file on the channel.
%%
%% `compiler` is not listed although py:load_source/2 uses it: it is a
%% library application (no processes), its modules load on first use, and
%% starting it here would only add to the helper's start-up time.
{application, py,
 [{description, "Runs Erlang functions for the Python package erlang"},
  {vsn, "0.1.0"},
  {modules, [py, py_app, py_boot, py_coordinator, py_handler, py_keeper, py_log_h, py_sup,
             py_user]},
  {registered, [py_sup, py_coordinator, py_keeper]},
  {applications, [kernel, stdlib]},
  {mod, {py_app, []}},
  {env, []}]}.
