%% The helper's public Erlang API: functions Python can call by name, and
%% the evaluation and module loading behind erlang.eval / erlang.load_module.
%%
%% Functions are registered under binary names (an atom or string name is
%% stored as its UTF-8 binary), so that a CALL of an unknown name from
%% Python never creates an atom.  The registry is the ETS table py_registry,
%% owned by py_sup.
-module(py).

%% API.
-export([register_function/2]).
-export([register_function/3]).
-export([unregister_function/1]).
-export([registered/0]).
-export([call/2]).
-export([eval/1]).
-export([load_source/2]).
-export([keep/1]).

-type name() :: atom() | binary() | string().
-export_type([name/0]).

%% Error formatting.
-export([format_error/1]).

%% API.

%% Registers Fun under Name: erlang.call(Name, A, B) runs Fun([A, B]).
%% Registering a name again replaces the function.
-spec register_function(name(), fun((list()) -> term())) -> ok.
register_function(Name, Fun) when is_function(Fun, 1) ->
    true = ets:insert(py_registry, {name(Name), {'fun', Fun}}),
    ok.

%% Registers Module:Function under Name: erlang.call(Name, A, B) runs
%% Module:Function([A, B]).  The module is looked up at each call, so a
%% reloaded module's new code is used.
-spec register_function(name(), module(), atom()) -> ok.
register_function(Name, Module, Function) when is_atom(Module), is_atom(Function) ->
    true = ets:insert(py_registry, {name(Name), {mfa, Module, Function}}),
    ok.

%% Removes Name; ok also if it was not registered.
-spec unregister_function(name()) -> ok.
unregister_function(Name) ->
    true = ets:delete(py_registry, name(Name)),
    ok.

%% The registered names, sorted.
-spec registered() -> [binary()].
registered() ->
    lists:sort(ets:select(py_registry, [{{'$1', '_'}, [], ['$1']}])).

%% Calls a registered function from Erlang, as a CALL from Python would.
%% (py_handler inlines the same lookup; keep the two in step.)
-spec call(name(), list()) -> term().
call(Name, Args) ->
    Key = name(Name),
    case ets:lookup(py_registry, Key) of
        [{_, {'fun', Fun}}] -> Fun(Args);
        [{_, {mfa, Module, Function}}] -> Module:Function(Args);
        [] -> erlang:error({undefined_function, Key})
    end.

%% Evaluates Erlang expressions and returns the value of the last one.
%% The final "." is optional.  Several dot-terminated sequences are
%% evaluated in order with their bindings carried over, as in the shell
%% ("X = 1. X + 1" is 2).  Everything is parsed before anything runs, so
%% a syntax error has no side effects.  Scan and parse errors raise
%% error:{syntax_error, Message}, Message a binary like
%% <<"1: syntax error before: ')'">>.
-spec eval(unicode:chardata()) -> term().
eval(Source) ->
    Text = case unicode:characters_to_list(Source) of
               List when is_list(List) -> List;
               _ -> erlang:raise(error, {syntax_error, <<"the source is not valid UTF-8 text">>}, [])
           end,
    Tokens = case erl_scan:string(Text, 1) of
                 {ok, Ts, End} -> ensure_dot(Ts, End);
                 {error, ScanError, _} -> syntax_error(ScanError)
             end,
    Sequences = [case erl_parse:parse_exprs(Seq) of
                     {ok, Exprs} -> Exprs;
                     {error, ParseError} -> syntax_error(ParseError)
                 end || Seq <- split_at_dots(Tokens)],
    eval_sequences(Sequences, erl_eval:new_bindings()).

%% Compiles the module in Source (the text of an .erl file) and loads it;
%% returns the module's name.  File names the source in error messages and
%% is the directory searched first for -include files.  The preprocessor
%% runs (macros such as ?MODULE, -define, -include, -ifdef all work).
%% Compile errors raise error:{compile_error, Message}, Message a binary of
%% "File:Line: text" lines; warnings are not reported.  A module loaded
%% again replaces the old code (processes still running the code before
%% that are killed, as with c:l/1).  A binary Source is the file's bytes,
%% read as erlc would (UTF-8 unless a coding comment says latin-1).  A
%% module named like one of the helper's own (py, py_handler, ...) raises
%% error:{reserved_module, Module} and is not loaded.
-spec load_source(unicode:chardata(), unicode:chardata()) -> module().
load_source(Source, File) ->
    FileName = unicode:characters_to_list(File),
    Bytes = if
                is_binary(Source) -> Source;
                true -> unicode:characters_to_binary(Source)
            end,
    Forms = preprocess(Bytes, FileName),
    case compile:forms(Forms, [binary, return_errors, return_warnings,
                               {source, FileName}]) of
        {ok, Module, Beam, _Warnings} ->
            ok = not_the_helpers(Module),
            _ = code:purge(Module),
            case code:load_binary(Module, FileName, Beam) of
                {module, Module} -> Module;
                {error, What} -> erlang:error({load_error, Module, What})
            end;
        {error, Errors, _Warnings} ->
            %% no stack trace: it would only show this function
            erlang:raise(error, {compile_error, format_errors(Errors)}, [])
    end.

%% Runs Fun in the helper's keeper process, which lives as long as the
%% helper, and returns Fun's value (or raises what Fun raised).  What a call
%% creates belongs to the worker's handler process, which a cancelled call
%% kills; what Fun creates belongs to the keeper: an ETS table made in Fun
%% is owned by it, a server Fun starts with start_link is linked to it
%% (and a crash of that server does not take the keeper down).  Fun should
%% return soon (kept Funs run one at a time) and must not call keep/1.
%%   py:keep(fun() -> ets:new(cache, [named_table, public]) end)
-spec keep(fun(() -> Result)) -> Result.
keep(Fun) ->
    py_keeper:keep(Fun).

%% Error formatting.

%% The erl_scan/erl_parse convention, so that syntax_error/1 formats this
%% module's own errors like theirs.
-spec format_error(no_expression) -> string().
format_error(no_expression) -> "no expression to evaluate".

%% Internal.

%% Loading a module over one of the helper's own would break the helper
%% (every later eval or load would call the user's module instead).
not_the_helpers(Module) ->
    {ok, Own} = application:get_key(py, modules),
    case lists:member(Module, Own) of
        false -> ok;
        true -> erlang:raise(error, {reserved_module, Module}, [])
    end.

name(Name) when is_binary(Name) ->
    Name;
name(Name) when is_atom(Name) ->
    atom_to_binary(Name, utf8);
name(Name) when is_list(Name) ->
    case unicode:characters_to_binary(Name) of
        Bin when is_binary(Bin) -> Bin;
        _ -> erlang:error(badarg, [Name])
    end.

%% "1 + 1" is as good as "1 + 1.": add the dot after the last token (not
%% after the text, which may end in a % comment).
ensure_dot([], End) ->
    %% Erlang's own message would be "syntax error before: '.'"
    syntax_error({End, ?MODULE, no_expression});
ensure_dot(Tokens, End) ->
    case lists:last(Tokens) of
        {dot, _} -> Tokens;
        _ -> Tokens ++ [{dot, End}]
    end.

split_at_dots(Tokens) ->
    split_at_dots(Tokens, [], []).

split_at_dots([], [], Seqs) ->
    lists:reverse(Seqs);
split_at_dots([{dot, _} = Dot | Rest], Acc, Seqs) ->
    split_at_dots(Rest, [], [lists:reverse(Acc, [Dot]) | Seqs]);
split_at_dots([Token | Rest], Acc, Seqs) ->
    split_at_dots(Rest, [Token | Acc], Seqs).

eval_sequences([Exprs], Bindings) ->
    {value, Value, _} = erl_eval:exprs(Exprs, Bindings),
    Value;
eval_sequences([Exprs | Rest], Bindings) ->
    {value, _, Bindings1} = erl_eval:exprs(Exprs, Bindings),
    eval_sequences(Rest, Bindings1).

-spec syntax_error(erl_scan:error_info()) -> no_return().
syntax_error({Location, Module, Description}) ->
    Message = io_lib:format("~ts: ~ts", [location(Location),
                                         Module:format_error(Description)]),
    %% no stack trace: it would only show this module
    erlang:raise(error, {syntax_error, unicode:characters_to_binary(Message)}, []).

location({Line, Column}) -> io_lib:format("~w:~w", [Line, Column]);
location(Line) when is_integer(Line) -> integer_to_list(Line);
location(_) -> "?".

%% epp only reads files, so the source goes through a temporary file, in a
%% directory of its own (epp looks for -include files next to the file it
%% reads first; nothing else may be found there).  -file attributes and
%% messages name File, not the temporary file.
preprocess(Source, FileName) ->
    Dir = temp_dir(),
    ok = file:make_dir(Dir),
    Tmp = filename:join(Dir, "source.erl"),
    try
        ok = file:write_file(Tmp, Source),
        Includes = [filename:dirname(FileName) || FileName =/= "nofile"],
        case epp:parse_file(Tmp, [{source_name, FileName}, {includes, Includes}]) of
            {ok, Forms} ->
                Forms;
            {error, Reason} ->
                Message = io_lib:format("~ts: ~tp", [FileName, Reason]),
                erlang:raise(error, {compile_error, unicode:characters_to_binary(Message)}, [])
        end
    after
        _ = file:delete(Tmp),
        _ = file:del_dir(Dir)
    end.

temp_dir() ->
    Root = case os:getenv("TMPDIR") of
               false -> "/tmp";
               "" -> "/tmp";
               Path -> Path
           end,
    filename:join(Root, io_lib:format("py_load_~s_~b",
                                      [os:getpid(), erlang:unique_integer([positive])])).

format_errors(Errors) ->
    unicode:characters_to_binary(
      lists:join($\n, [[where(File, Location), ": ", Module:format_error(Description)]
                       || {File, Infos} <- Errors,
                          {Location, Module, Description} <- Infos])).

%% "File:Line", or just "File" for errors about the whole module.
where(File, none) -> File;
where(File, Location) -> [File, $:, location(Location)].
