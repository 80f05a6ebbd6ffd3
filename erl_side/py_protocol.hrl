%% Wire protocol shared with the Python extension; keep in step with
%% erlang_module/protocol.h, which documents every kind.
%%
%% Frame (port option {packet,4}): <<Kind:8, Worker:32/big, Seq:32/big, Payload/binary>>
%% Payload is one term_to_binary/1 term.  Worker 0 is the control channel.
%% The full protocol (payload shapes, error reasons, ordering guarantees) is
%% documented at the top of py_coordinator.erl.

-define(PY_PROTOCOL_VERSION, 1).

%% Python -> BEAM
-define(K_CALL,    1).   %% {Name :: binary(), Args :: list()}
-define(K_APPLY,   2).   %% {Module :: atom(), Function :: atom(), Args :: list()}
-define(K_EVAL,    3).   %% Source :: binary()
-define(K_CANCEL,  4).   %% [] -- kill the process if it still runs (Worker, Seq);
                         %% no reply is ever sent for a cancelled call
-define(K_CALL_ASYNC,  5).   %% as K_CALL, K_APPLY, K_EVAL, each call in a
-define(K_APPLY_ASYNC, 6).   %% process of its own keyed by {Worker, Seq}
-define(K_EVAL_ASYNC,  7).   %% (Python sends them on ?ASYNC_WORKER)

-define(ASYNC_WORKER, 16#FFFFFFFF).

%% BEAM -> Python
-define(K_OK,     16).   %% Result
-define(K_ERROR,  17).   %% {Class, Reason, Stacktrace, Message :: binary()} (Erlang's
                         %% text, <<>> if none); also {exit, Reason, []} (no text)
                         %% from the coordinator when a handler dies mid-call
-define(K_HELLO,  18).   %% worker 0: #{protocol, otp_release, erts_version, node, os_pid}
-define(K_OUTPUT, 19).   %% {stdout | stderr, Data :: binary()}; Worker/Seq of the
                         %% call that printed it (sent before its reply), or 0/0.
                         %% The helper only sends stdout: logs are LOG frames.
-define(K_LOG,    20).   %% worker 0, Seq 0: #{level, msg, meta}, one logger event
                         %% (py_log_h); Python hands it to its logging module

%% Erlang calls Python, and messages between Erlang processes and Python
%% (payloads in py_coordinator.erl)
-define(K_CALLBACK,       32).   %% BEAM->Python: {Alias | undefined, Name :: binary(), Args}
-define(K_CALLBACK_REPLY, 33).   %% Python->BEAM: {Alias, ok | error, Value}
-define(K_SEND,           34).   %% Python->BEAM: {Dest, Msg}; OK/ERROR reply unless worker 0
-define(K_MESSAGE,        35).   %% BEAM->Python: worker 0, Seq = mailbox Id: Msg
-define(K_CREDIT,         36).   %% Python->BEAM: worker 0, Seq = mailbox Id: {Msgs, Bytes}
-define(K_MAILBOX_DOWN,   37).   %% BEAM->Python: worker 0, Seq = mailbox Id: Reason

%% A mailbox's window: MESSAGE frames sent and not yet credited back.
-define(MAILBOX_WINDOW_MSGS, 1024).
-define(MAILBOX_WINDOW_BYTES, 67108864).  %% 64 MiB
