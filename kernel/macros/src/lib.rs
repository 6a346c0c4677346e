//! `#[kernel::test]`: the test attribute of the kernel's test framework (`kernel/src/testing.rs`).
//!
//! ```ignore
//! #[kernel::test]
//! fn boxes_work() { assert_eq!(*Box::new(41) + 1, 42); }
//!
//! #[kernel::test]
//! #[should_panic(expected = "PAGE FAULT")]
//! fn page_fault_is_reported() { /* ... */ }
//!
//! #[kernel::test]
//! #[ignore = "needs 4 GiB of RAM"]
//! fn huge() { /* ... */ }
//! ```
//!
//! It keeps the function (under `#[cfg(test)]`, as `#[test]` does) and adds two statics next to it:
//!
//! - a `kernel::testing::Test` registered with `#[test_case]`, which the kernel's test runner
//!   receives: the test's name (`module_path!()` + function name), `file!()`, `line!()` and
//!   `column!()` (so tests run in source order, not in the alphabetical order in which rustc
//!   hands `#[test_case]`s over), `should_panic` with its `expected` text, `ignore`, and the
//!   function;
//! - the same facts as text in the ELF section `.ktest_list`, which the host runner (`boot/`)
//!   reads without booting the kernel, for `--list`, filters, `--skip` and `--ignored`.
//!
//! `#[should_panic]`, `#[should_panic = "text"]`, `#[should_panic(expected = "text")]`,
//! `#[ignore]` and `#[ignore = "reason"]` are understood as libtest understands them; anything
//! else the framework cannot honour is a compile error, never silently dropped. `#[cfg(..)]` on
//! the function applies to the generated statics too.
//!
//! No `syn`: the grammar accepted is small (attributes, `fn name() { .. }`), and a proc-macro
//! crate without dependencies builds in a second.

use proc_macro::{Delimiter, Group, Ident, Literal, Punct, Spacing, Span, TokenStream, TokenTree};

/// Marks a function as a kernel test. See the crate documentation and `kernel::testing`.
#[proc_macro_attribute]
pub fn test(attr: TokenStream, item: TokenStream) -> TokenStream {
    if let Some(first) = attr.into_iter().next() {
        return error(
            first.span(),
            "`#[kernel::test]` takes no arguments; write `#[should_panic(expected = \"…\")]` or \
             `#[ignore = \"…\"]` as attributes of their own below it",
        );
    }
    match expand(item) {
        Ok(tokens) => tokens,
        Err((span, msg)) => error(span, &msg),
    }
}

/// What the attributes of a test function asked for.
#[derive(Default)]
struct Flags {
    should_panic: bool,
    /// The `expected` text of `should_panic`, as its literal token.
    expected: Option<Literal>,
    ignore: bool,
    /// The reason of `#[ignore = "..."]`, as its literal token.
    reason: Option<Literal>,
    /// `#[cfg(..)]` attributes of the function, repeated on the generated statics.
    cfgs: Vec<TokenStream>,
}

type Error = (Span, String);

fn expand(item: TokenStream) -> Result<TokenStream, Error> {
    let tokens: Vec<TokenTree> = item.into_iter().collect();
    let mut flags = Flags::default();
    // The function with `should_panic` / `ignore` removed.
    let mut function: Vec<TokenTree> = Vec::new();
    let mut i = 0;
    while let (Some(TokenTree::Punct(hash)), Some(TokenTree::Group(group))) =
        (tokens.get(i), tokens.get(i + 1))
    {
        if hash.as_char() != '#' || group.delimiter() != Delimiter::Bracket {
            break;
        }
        if attribute(group, &mut flags)? {
            function.push(tokens[i].clone());
            function.push(tokens[i + 1].clone());
        }
        i += 2;
    }
    let name = signature(&tokens[i..])?;
    function.extend(tokens[i..].iter().cloned());

    let mut out: TokenStream = "#[cfg(test)]".parse().expect("valid tokens");
    out.extend(function);
    out.extend(statics(&name, &flags));
    Ok(out)
}

/// Reads one outer attribute; returns whether it stays on the function.
fn attribute(group: &Group, flags: &mut Flags) -> Result<bool, Error> {
    let inner: Vec<TokenTree> = group.stream().into_iter().collect();
    let Some(TokenTree::Ident(name)) = inner.first() else {
        return Ok(true);
    };
    let rest = &inner[1..];
    match name.to_string().as_str() {
        "should_panic" => {
            if flags.should_panic {
                return Err((name.span(), "duplicate `#[should_panic]`".into()));
            }
            flags.should_panic = true;
            flags.expected = match rest {
                [] => None,
                [TokenTree::Punct(eq), TokenTree::Literal(text)] if eq.as_char() == '=' => {
                    Some(string_literal(text)?)
                }
                [TokenTree::Group(args)] if args.delimiter() == Delimiter::Parenthesis => {
                    Some(expected_argument(args)?)
                }
                _ => {
                    return Err((
                        name.span(),
                        "write `#[should_panic]`, `#[should_panic = \"text\"]` or \
                         `#[should_panic(expected = \"text\")]`"
                            .into(),
                    ));
                }
            };
            Ok(false)
        }
        "ignore" => {
            if flags.ignore {
                return Err((name.span(), "duplicate `#[ignore]`".into()));
            }
            flags.ignore = true;
            flags.reason = match rest {
                [] => None,
                [TokenTree::Punct(eq), TokenTree::Literal(text)] if eq.as_char() == '=' => {
                    Some(string_literal(text)?)
                }
                _ => {
                    return Err((
                        name.span(),
                        "write `#[ignore]` or `#[ignore = \"reason\"]`".into(),
                    ));
                }
            };
            Ok(false)
        }
        "test" | "test_case" => Err((
            name.span(),
            format!(
                "`#[{name}]` and `#[kernel::test]` on one function: keep only `#[kernel::test]`"
            ),
        )),
        "cfg" => {
            flags.cfgs.push(TokenTree::Group(group.clone()).into());
            Ok(true)
        }
        _ => Ok(true),
    }
}

/// The text of `(expected = "text")`.
fn expected_argument(args: &Group) -> Result<Literal, Error> {
    let inner: Vec<TokenTree> = args.stream().into_iter().collect();
    match inner.as_slice() {
        [
            TokenTree::Ident(key),
            TokenTree::Punct(eq),
            TokenTree::Literal(text),
        ] if key.to_string() == "expected" && eq.as_char() == '=' => string_literal(text),
        _ => Err((
            args.span(),
            "write `#[should_panic(expected = \"text\")]`".into(),
        )),
    }
}

fn string_literal(lit: &Literal) -> Result<Literal, Error> {
    let text = lit.to_string();
    if text.starts_with('"') || text.starts_with("r\"") || text.starts_with("r#") {
        Ok(lit.clone())
    } else {
        Err((lit.span(), "expected a string literal".into()))
    }
}

/// Checks `[pub(..)] fn name() { .. }` and returns `name`.
fn signature(tokens: &[TokenTree]) -> Result<Ident, Error> {
    let mut i = 0;
    let span = |i: usize| {
        tokens
            .get(i)
            .or(tokens.last())
            .map_or_else(Span::call_site, TokenTree::span)
    };
    if matches!(tokens.get(i), Some(TokenTree::Ident(id)) if id.to_string() == "pub") {
        i += 1;
        if matches!(tokens.get(i), Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis)
        {
            i += 1;
        }
    }
    match tokens.get(i) {
        Some(TokenTree::Ident(id)) if id.to_string() == "fn" => i += 1,
        Some(TokenTree::Ident(id))
            if matches!(
                id.to_string().as_str(),
                "async" | "unsafe" | "extern" | "const"
            ) =>
        {
            return Err((
                id.span(),
                format!("a kernel test is a plain `fn name()`, not `{id} fn`"),
            ));
        }
        _ => {
            return Err((
                span(i),
                "`#[kernel::test]` goes on a function: `fn name() { … }`".into(),
            ));
        }
    }
    let Some(TokenTree::Ident(name)) = tokens.get(i) else {
        return Err((span(i), "expected the test function's name".into()));
    };
    i += 1;
    match tokens.get(i) {
        Some(TokenTree::Group(params)) if params.delimiter() == Delimiter::Parenthesis => {
            if !params.stream().is_empty() {
                return Err((params.span(), "a kernel test takes no arguments".into()));
            }
            i += 1;
        }
        _ => {
            return Err((
                span(i),
                "a kernel test has no generic parameters: `fn name() { … }`".into(),
            ));
        }
    }
    match tokens.get(i) {
        Some(TokenTree::Group(body)) if body.delimiter() == Delimiter::Brace => Ok(name.clone()),
        _ => Err((
            span(i),
            "a kernel test returns nothing (`fn name() { … }`); fail it by panicking, \
             e.g. with `.unwrap()` or `assert!`"
                .into(),
        )),
    }
}

/// The `#[test_case]` static and the `.ktest_list` record of test `name`.
fn statics(name: &Ident, flags: &Flags) -> TokenStream {
    let fn_name = name.to_string();
    let plain = fn_name.strip_prefix("r#").unwrap_or(&fn_name);
    let cfgs: String = flags.cfgs.iter().map(|c| format!("#{c} ")).collect();
    let expected = flags
        .expected
        .as_ref()
        .map_or_else(|| "None".to_owned(), |e| format!("Some({e})"));
    let record_flags = match (flags.should_panic, flags.ignore) {
        (false, false) => "",
        (true, false) => "p",
        (false, true) => "i",
        (true, true) => "pi",
    };
    let reason = flags
        .reason
        .as_ref()
        .map_or_else(|| "\"\"".to_owned(), ToString::to_string);
    // The record: name, file, line, column, flags, ignore reason (see kernel::testing::__record).
    let record = format!(
        "concat!(\"\\x01\", module_path!(), \"::{plain}\", \"\\x1f\", file!(), \"\\x1f\", \
         line!(), \"\\x1f\", column!(), \"\\x1f{record_flags}\\x1f\", {reason}, \"\\x02\")"
    );
    let code = format!(
        "#[cfg(test)] {cfgs} #[test_case] #[doc(hidden)] #[allow(non_upper_case_globals)]
        static __KTEST_{plain}: ::kernel::testing::Test = ::kernel::testing::Test {{
            name: concat!(module_path!(), \"::{plain}\"),
            file: file!(),
            line: line!(),
            column: column!(),
            should_panic: {should_panic},
            expected: {expected},
            ignore: {ignore},
            run: {fn_name},
        }};
        #[cfg(test)] {cfgs} #[used] #[unsafe(link_section = \".ktest_list\")] #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        static __KTEST_RECORD_{plain}: [u8; ::kernel::testing::__record_len({record})] =
            ::kernel::testing::__record({record});",
        should_panic = flags.should_panic,
        ignore = flags.ignore,
    );
    code.parse()
        .expect("the generated statics are valid tokens")
}

/// `::core::compile_error!("msg");` pointing at `span`.
fn error(span: Span, msg: &str) -> TokenStream {
    let tokens: Vec<TokenTree> = vec![
        Punct::new(':', Spacing::Joint).into(),
        Punct::new(':', Spacing::Alone).into(),
        Ident::new("core", span).into(),
        Punct::new(':', Spacing::Joint).into(),
        Punct::new(':', Spacing::Alone).into(),
        Ident::new("compile_error", span).into(),
        Punct::new('!', Spacing::Alone).into(),
        Group::new(
            Delimiter::Parenthesis,
            TokenTree::from(Literal::string(msg)).into(),
        )
        .into(),
        Punct::new(';', Spacing::Alone).into(),
    ];
    tokens
        .into_iter()
        .map(|mut t| {
            t.set_span(span);
            t
        })
        .collect()
}
