/* Wire protocol shared by the extension and the helper BEAM.
 *
 * Every frame on the helper's stdin/stdout is {packet,4}:
 *     <<Len:32/big, Body:Len/binary>>
 * and every Body starts with a fixed 9-byte header:
 *     <<Kind:8, Worker:32/big, Seq:32/big, Payload/binary>>
 * Payload is one term in external term format (starts with 131), except EVAL,
 * whose payload is also an ETF binary holding the source text.
 *
 * The header lets the coordinator and the Python reader route a frame without
 * decoding the payload.  Worker 0 is the control channel.  Seq is the worker's
 * call counter; a reply whose Seq is not the one its worker waits for is stale
 * and is dropped.
 *
 * This file is the protocol's one definition: erl_side/py_protocol.hrl
 * repeats it for the Erlang side, the extension exports it to Python
 * (erlang._erlang.K_CALL, ...), benchmarks/floor.c includes it, and
 * tests/test_protocol.py checks that every copy matches.
 */
#ifndef ERPY_PROTOCOL_H
#define ERPY_PROTOCOL_H

#define ERPY_PROTOCOL_VERSION 1
#define ERPY_HEADER_SIZE 9          /* Kind:8 + Worker:32 + Seq:32 */
_Static_assert(ERPY_HEADER_SIZE == 1 + 4 + 4, "the header is Kind, Worker, Seq");

/* Python -> BEAM */
#define ERPY_K_CALL            1    /* {Name :: binary(), Args :: list()} */
#define ERPY_K_APPLY           2    /* {Module :: atom(), Function :: atom(), Args :: list()} */
#define ERPY_K_EVAL            3    /* Source :: binary() */
#define ERPY_K_CANCEL          4    /* [] ; abandons (Worker, Seq): its process killed */
/* The same requests as async calls: each runs in a process of its own,
 * keyed by (Worker, Seq), so that many are in flight at once on one worker
 * (Python sends them on ERPY_ASYNC_WORKER). */
#define ERPY_K_CALL_ASYNC      5
#define ERPY_K_APPLY_ASYNC     6
#define ERPY_K_EVAL_ASYNC      7

/* The worker id of async calls: no thread's; Seq names the call. */
#define ERPY_ASYNC_WORKER 0xFFFFFFFFu

/* BEAM -> Python */
#define ERPY_K_OK             16    /* Result */
#define ERPY_K_ERROR          17    /* {Class, Reason, Stacktrace, Message :: binary()}
                                       (Erlang's text, <<>> if none), or
                                       {Class, Reason, Stacktrace} (no text) */
#define ERPY_K_HELLO          18    /* worker 0: #{protocol, otp_release, erts_version, node, os_pid} */
#define ERPY_K_OUTPUT         19    /* {stdout | stderr, Data :: binary()}; Worker/Seq of the call
                                       that printed it, or 0/0 */
#define ERPY_K_LOG            20    /* worker 0 only: #{level, msg, meta}, one logger event for
                                       Python's logging (see erlang_module/_logging.py) */

/* Erlang calls Python, and messages (see erl_side/py_coordinator.erl) */
#define ERPY_K_CALLBACK       32    /* BEAM -> Python: {Alias | undefined, Name :: binary(),
                                       Args :: list()}; Worker/Seq of the waiting thread's
                                       call whose handler called py:call_python (that thread
                                       runs it), or 0/0 (the python_workers pool runs it) */
#define ERPY_K_CALLBACK_REPLY 33    /* Python -> BEAM: {Alias, ok, Value} |
                                       {Alias, error, {python, Type, Message, Traceback}} |
                                       {Alias, error, {undefined_python_function, Name}} */
#define ERPY_K_SEND           34    /* Python -> BEAM: {Dest, Msg}; on worker 0 no reply, on
                                       a thread's worker OK ok | ERROR (badarg) */
#define ERPY_K_MESSAGE        35    /* BEAM -> Python: worker 0, Seq = mailbox id; payload:
                                       the message */
#define ERPY_K_CREDIT         36    /* Python -> BEAM: worker 0, Seq = mailbox id;
                                       {Messages, Bytes} taken out of the mailbox's queue */
#define ERPY_K_MAILBOX_DOWN   37    /* BEAM -> Python: worker 0, Seq = mailbox id; the
                                       mailbox process exited with Reason (after its last
                                       MESSAGE) */

/* A mailbox process sends at most this much that Python has not credited
 * back (a single larger message is sent when nothing is outstanding): the
 * bound on what a mailbox holds on the Python side. */
#define ERPY_MAILBOX_WINDOW_MSGS  1024
#define ERPY_MAILBOX_WINDOW_BYTES 67108864   /* 64 MiB */

/* The few external-term-format bytes that frames are built from by hand
 * (the codec checks them against ei.h's ERL_*_EXT). */
#define ERPY_ETF_VERSION     131    /* first byte of a term_to_binary result */
#define ERPY_ETF_SMALL_TUPLE 104    /* SMALL_TUPLE_EXT: Arity:8, Elements */
#define ERPY_ETF_NIL         106    /* NIL_EXT: [] */
#define ERPY_ETF_LIST        108    /* LIST_EXT: Length:32, Elements, Tail */
#define ERPY_ETF_BINARY      109    /* BINARY_EXT: Len:32, Data */

#endif
