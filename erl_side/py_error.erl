%% The text of an ERROR reply: the exception as Erlang itself prints it.
%%
%% py_handler calls this only when a call raised, never on the success
%% path.  The text is erl_error:format_exception/4's, the one the shell
%% prints, with OTP's extended error information ("*** argument 1: the
%% table identifier does not refer to an existing ETS table"), without the
%% frames of the helper and of erl_eval at the bottom of the stack.  On top
%% of that: an undef says which arities of the function do exist, or that
%% its module is not on the code path; the reasons the helper makes itself
%% get their own words; an Elixir exception gets Elixir's own message.
%%
%% Nothing here may fail the call's reply: any error while formatting gives
%% <<>>, and Python then words the message itself, as from a 3-tuple.
-module(py_error).

%% API.
-export([format/3]).
-export([stack/1]).

%% A term inside the text is cut to this many characters, the whole text to
%% ?MAX_CHARS: a 10 MB reason must not make a 10 MB exception message.
-define(TERM_CHARS, 1000).
-define(MAX_CHARS, 4000).

%% API.

%% The text for Class:Reason raised with Stack (the stack Python gets: the
%% helper's py_handler frames already dropped).  <<>> when formatting
%% failed.
-spec format(error | exit | throw, term(), [tuple()]) -> binary().
format(Class, Reason, Stack) ->
    try unicode:characters_to_binary(text(Class, Reason, Stack)) of
        Text when is_binary(Text) -> cut(Text);
        _ -> <<>>
    catch
        _:_ -> <<>>
    end.

%% Stack with every location's file name as a UTF-8 binary instead of a
%% charlist, so that Python sees a str rather than a list of ints.  A stack
%% that is not in the usual shape is returned as it is.
-spec stack([tuple()]) -> [tuple()].
stack(Stack) ->
    try
        [frame(Frame) || Frame <- Stack]
    catch
        _:_ -> Stack
    end.

%% Internal.

frame({M, F, A, Location}) when is_list(Location) ->
    {M, F, A, [file_name(Item) || Item <- Location]};
frame(Frame) ->
    Frame.

file_name({file, File} = Item) when is_list(File) ->
    case unicode:characters_to_binary(File) of
        Bin when is_binary(Bin) -> {file, Bin};
        _ -> Item
    end;
file_name(Item) ->
    Item.

%% The reasons py, py_handler and erl_eval raise themselves: their own
%% words, since Erlang would only print the term.
text(error, {syntax_error, Message}, _) when is_binary(Message) ->
    Message;
text(error, {compile_error, Message}, _) when is_binary(Message) ->
    Message;
text(error, {load_error, Module, Why}, _) ->
    io_lib:format("module ~tw could not be loaded: ~ts", [Module, term(Why, 1)]);
text(error, {reserved_module, Module}, _) ->
    io_lib:format("module ~tw was not loaded: the helper's own modules have that "
                  "name (py, py_*)", [Module]);
text(error, {unbound_var, Name}, _) when is_atom(Name) ->
    %% erl_eval's, from eval: the shell reports these before running
    io_lib:format("variable ~tw is unbound", [Name]);
text(error, undef, [{M, F, A, _} | _] = Stack) when is_atom(M), is_atom(F) ->
    %% Erlang says "undefined function lists:seq/1"; say also why.
    [First | Rest] = string:split(unicode:characters_to_binary(erlang(error, undef, Stack)),
                                  "\n"),
    [First, undef_hint(M, F, arity(A)) | [["\n", R] || R <- Rest]];
text(Class, Reason, Stack) ->
    case elixir(Class, Reason, Stack) of
        {ok, Text} -> Text;
        false -> erlang(Class, Reason, Stack)
    end.

erlang(Class, Reason, Stack) ->
    erl_error:format_exception(Class, Reason, Stack,
                               #{stack_trim_fun => fun machinery/3,
                                 format_fun => fun term/2}).

%% The bottom of the stack (stack_trim_fun trims from the end only): the
%% evaluator and the helper's own entry points say nothing about where the
%% user's code failed.
machinery(erl_eval, _, _) -> true;
machinery(py, _, _) -> true;
machinery(py_handler, _, _) -> true;
machinery(_, _, _) -> false.

%% erl_error's default is io_lib:print(Term, Column, 80, 30): depth 30
%% alone lets a wide nested term print megabytes (measured: 886 KB for a
%% 30x30x30x30 list).  io_lib_pretty (what io_lib:format's ~p runs) takes a
%% character limit as well.
term(Term, Column) ->
    io_lib_pretty:print(Term, [{column, Column}, {line_length, 80}, {depth, 30},
                               {chars_limit, ?TERM_CHARS}, {encoding, unicode}]).

arity(Args) when is_list(Args) -> length(Args);
arity(Arity) -> Arity.

%% Why M:F/Arity is undefined: the arities of F that M does export, or that
%% M cannot be loaded.  (The call already tried to load M, so asking again
%% costs no more than a look at the code path.)
undef_hint(M, F, Arity) ->
    case code:ensure_loaded(M) of
        {module, M} ->
            case [N || {F1, N} <- M:module_info(exports), F1 =:= F, N =/= Arity] of
                [] ->
                    "";
                Others ->
                    Names = [io_lib:format("~tw:~tw/~w", [M, F, N]) || N <- lists:sort(Others)],
                    [" (", lists:join(", ", Names),
                     case Others of [_] -> " exists)"; _ -> " exist)" end]
            end;
        {error, nofile} ->
            io_lib:format(" (module ~ts is not available: not on the code path)", [short(M)]);
        {error, Why} ->
            io_lib:format(" (module ~ts could not be loaded: ~tw)", [short(M), Why])
    end.

%% An atom as Erlang writes it, cut to 60 characters: the line before names
%% it in full already.
short(Atom) ->
    Text = io_lib:write_atom(Atom),
    case string:length(Text) > 60 of
        true -> [string:slice(Text, 0, 57), "..."];
        false -> Text
    end.

%% Elixir's own words ("** (ArgumentError) errors were found at the given
%% arguments: ...") for an Elixir exception, and in Elixir mode (start
%% option elixir) for the Erlang errors that Elixir turns into one of its
%% own exceptions (badarg into ArgumentError, ...).  Erlang errors Elixir
%% only wraps (ErlangError) keep Erlang's text, which says more.
elixir(error, Reason, Stack) ->
    case is_exception(Reason) orelse application:get_env(py, elixir, false) =:= true of
        true ->
            case code:ensure_loaded('Elixir.Exception') of
                {module, _} -> elixir_text(Reason, Stack);
                {error, _} -> false
            end;
        false ->
            false
    end;
elixir(_, _, _) ->
    false.

elixir_text(Reason, Stack) ->
    case 'Elixir.Exception':normalize(error, Reason, Stack) of
        #{'__struct__' := 'Elixir.ErlangError'} ->
            false;
        Exception ->
            Banner = 'Elixir.Exception':format_banner(error, Exception, Stack),
            case trim(Stack) of
                [] -> {ok, Banner};
                User -> {ok, [Banner, $\n, 'Elixir.Exception':format_stacktrace(User)]}
            end
    end.

is_exception(#{'__struct__' := Module, '__exception__' := true}) -> is_atom(Module);
is_exception(_) -> false.

%% Stack without its bottom machinery frames (as stack_trim_fun does).
trim(Stack) ->
    lists:reverse(lists:dropwhile(fun({M, F, A, _}) -> machinery(M, F, A);
                                     (_) -> false
                                  end, lists:reverse(Stack))).

%% Text cut to ?MAX_CHARS characters (looking at no more of it than that),
%% trailing newlines dropped.
cut(Text) when byte_size(Text) =< ?MAX_CHARS ->
    unicode:characters_to_binary(string:trim(Text, trailing, "\n"));
cut(Text) ->
    Head = unicode:characters_to_binary(string:slice(Text, 0, ?MAX_CHARS)),
    case byte_size(Head) < byte_size(Text) of
        true -> <<Head/binary, "...">>;
        false -> cut(Head)
    end.
