"""A small Go text/template evaluator that renders Ollama chat templates exactly as Ollama does.

Actions, `{{-`/`-}}` trimming, comments, if/else if/else, range (with `$i, $m :=` and else), with,
break/continue, variables (`$`, `:=`, `=`), pipelines, parenthesised pipelines, and the builtins
eq ne lt le gt ge and or not len index slice print printf println, plus Ollama's `json`,
`currentDate` and `yesterdayDate`. Not supported: define/template/block, method calls,
html/js/urlquery/call and `toTypeScriptType` (they raise TemplateUnsupported).

lexer -> parser (tree in nodes) -> execute (builtins in funcs, Go values and printing in values);
toolkit.chat.render feeds it Ollama's chat data.
"""
