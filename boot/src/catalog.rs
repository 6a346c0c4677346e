//! A test kernel's list of tests, read from its ELF section `.ktest_list`, and what cargo's test
//! arguments select from it.
//!
//! `#[kernel::test]` (crate `kernel-macros`) writes one record per test:
//! `\x01 name \x1f file \x1f line \x1f column \x1f flags \x1f reason \x02`, where `name` is the
//! full path (`module_path!()` and the function), `flags` holds `p` for `should_panic` and `i` for
//! `ignore`, and `reason` is the `#[ignore = "..."]` text. The linker may pad between records.
//!
//! Tests are numbered in source order: by file, line, column, then full name, compared exactly as
//! `kernel::testing` compares them, so both sides give every test the same number.

use std::fmt;
use std::fmt::Write as _;

use crate::options::{RunIgnored, TestArgs};

/// The ELF section holding the records.
pub const SECTION: &str = ".ktest_list";

const RECORD_START: u8 = 0x01;
const RECORD_END: u8 = 0x02;
const FIELD_SEPARATOR: char = '\x1f';

/// The test name of a kernel binary at `path`: its file name without the `-<hash>` cargo adds
/// to test binaries (`kheap_example-a1b166e906e68001` → `kheap_example`).
pub fn plain_test_name(path: &std::path::Path) -> String {
    let file = path
        .file_name()
        .map_or_else(|| "kernel".into(), |n| n.to_string_lossy().into_owned());
    match file.rsplit_once('-') {
        Some((stem, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            stem.to_owned()
        }
        _ => file,
    }
}

/// One test of a kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRecord {
    /// `module_path!()` + function name, e.g. `kernel::bench::tests::smoke_workloads_are_consistent`.
    pub full_name: String,
    /// Its source file.
    pub file: String,
    /// The line of its `#[kernel::test]`.
    pub line: u32,
    /// The column of its `#[kernel::test]`.
    pub column: u32,
    /// `#[should_panic]`.
    pub should_panic: bool,
    /// `#[ignore]`.
    pub ignore: bool,
    /// The reason of `#[ignore = "..."]`, if one was given.
    pub reason: Option<String>,
}

impl TestRecord {
    /// The name as cargo prints it: without the crate name.
    pub fn name(&self) -> &str {
        self.full_name
            .split_once("::")
            .map_or(self.full_name.as_str(), |(_, rest)| rest)
    }

    /// `name`, with libtest's ` - should panic` for should-panic tests.
    pub fn display_name(&self) -> String {
        if self.should_panic {
            format!("{} - should panic", self.name())
        } else {
            self.name().to_owned()
        }
    }
}

/// A malformed `.ktest_list` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogError(String);

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed test list (section {SECTION}): {}", self.0)
    }
}

/// The tests of a kernel, in source order (index = test number).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Catalog {
    /// The tests.
    pub tests: Vec<TestRecord>,
}

impl Catalog {
    /// Reads the records of a `.ktest_list` section.
    pub fn parse(section: &[u8]) -> Result<Self, CatalogError> {
        let mut tests = Vec::new();
        let mut rest = section;
        while let Some(start) = rest.iter().position(|&b| b == RECORD_START) {
            if let Some(junk) = rest[..start].iter().find(|&&b| b != 0) {
                return Err(CatalogError(format!("byte {junk:#04x} between records")));
            }
            let body = &rest[start + 1..];
            let end = body
                .iter()
                .position(|&b| b == RECORD_END)
                .ok_or_else(|| CatalogError("a record has no end".into()))?;
            tests.push(parse_record(&body[..end])?);
            rest = &body[end + 1..];
        }
        if rest.iter().any(|&b| b != 0) {
            return Err(CatalogError("bytes after the last record".into()));
        }
        tests.sort_by(|a, b| {
            (a.file.as_bytes(), a.line, a.column, a.full_name.as_bytes()).cmp(&(
                b.file.as_bytes(),
                b.line,
                b.column,
                b.full_name.as_bytes(),
            ))
        });
        Ok(Self { tests })
    }

    /// The test list of a kernel without `#[kernel::test]`s run by `cargo test` with arguments
    /// (an example kernel that reports by its exit status): one test, named as cargo names the
    /// binary ([`plain_test_name`]).
    pub fn single(name: String) -> Self {
        Self {
            tests: vec![TestRecord {
                full_name: name,
                file: String::new(),
                line: 0,
                column: 0,
                should_panic: false,
                ignore: false,
                reason: None,
            }],
        }
    }

    /// Applies cargo's test arguments: which tests to run, which to report as ignored, how many
    /// were filtered out.
    pub fn select(&self, args: &TestArgs) -> Selection {
        let matches = |name: &str, pattern: &str| {
            if args.exact {
                name == pattern
            } else {
                name.contains(pattern)
            }
        };
        let mut selection = Selection::default();
        for (index, test) in self.tests.iter().enumerate() {
            let name = test.name();
            let wanted = args.filters.is_empty() || args.filters.iter().any(|f| matches(name, f));
            let skipped = args.skip.iter().any(|s| matches(name, s));
            let kind_ok = args.ignored != RunIgnored::Only || test.ignore;
            if !(wanted && !skipped && kind_ok) {
                selection.filtered_out += 1;
                continue;
            }
            let run = !test.ignore || args.ignored != RunIgnored::No;
            selection.tests.push(Selected { index, run });
        }
        selection
    }

    /// What `--list` prints for `selection`, as libtest prints it.
    pub fn list(&self, selection: &Selection, terse: bool) -> String {
        let mut out = String::new();
        for s in &selection.tests {
            let _ = writeln!(out, "{}: test", self.tests[s.index].name());
        }
        if !terse {
            let n = selection.tests.len();
            if n > 0 {
                out.push('\n');
            }
            let _ = writeln!(out, "{}, 0 benchmarks", plural(n, "test"));
        }
        out
    }
}

fn parse_record(body: &[u8]) -> Result<TestRecord, CatalogError> {
    let text =
        std::str::from_utf8(body).map_err(|_| CatalogError("a record is not UTF-8".into()))?;
    let fields: Vec<&str> = text.split(FIELD_SEPARATOR).collect();
    let [name, file, line, column, flags, reason] = fields[..] else {
        return Err(CatalogError(format!(
            "a record has {} fields, not 6: {text:?}",
            fields.len()
        )));
    };
    let number = |what: &str, s: &str| {
        s.parse::<u32>()
            .map_err(|_| CatalogError(format!("bad {what} {s:?} in {name}")))
    };
    Ok(TestRecord {
        full_name: name.to_owned(),
        file: file.to_owned(),
        line: number("line", line)?,
        column: number("column", column)?,
        should_panic: flags.contains('p'),
        ignore: flags.contains('i'),
        reason: (!reason.is_empty()).then(|| reason.to_owned()),
    })
}

/// `1 test`, `2 tests`.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// A test that passed the filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    /// Its number.
    pub index: usize,
    /// `false`: reported as ignored without running.
    pub run: bool,
}

/// What the test arguments chose, in source order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// The tests that passed the filters (run, or reported as ignored).
    pub tests: Vec<Selected>,
    /// Tests that did not pass the filters.
    pub filtered_out: usize,
}

impl Selection {
    /// Whether any test is to be run (otherwise the kernel need not boot).
    pub fn runs_any(&self) -> bool {
        self.tests.iter().any(|s| s.run)
    }

    /// The tests to run as the kernel reads them from fw_cfg `opt/ktest/run`: a hex bitmap, bit
    /// `i % 4` of digit `i / 4` for test `i`, over `total` tests.
    pub fn bitmap(&self, total: usize) -> String {
        let mut digits = vec![0u8; total.div_ceil(4)];
        for s in self.tests.iter().filter(|s| s.run) {
            digits[s.index / 4] |= 1 << (s.index % 4);
        }
        digits
            .iter()
            .map(|d| char::from_digit(u32::from(*d), 16).expect("a nibble"))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record as `#[kernel::test]` writes it.
    pub(crate) fn record(name: &str, file: &str, line: u32, flags: &str, reason: &str) -> Vec<u8> {
        format!("\x01{name}\x1f{file}\x1f{line}\x1f5\x1f{flags}\x1f{reason}\x02").into_bytes()
    }

    fn catalog() -> Catalog {
        // Out of order and padded, as a linker may leave them.
        let mut section = Vec::new();
        section.extend(record("k::zeta_first", "tests/a.rs", 3, "", ""));
        section.extend([0, 0, 0]);
        section.extend(record("k::alpha_last", "tests/b.rs", 1, "", ""));
        section.extend(record(
            "k::mid::slow",
            "tests/a.rs",
            40,
            "i",
            "takes minutes",
        ));
        section.extend(record("k::mid::faults", "tests/a.rs", 20, "p", ""));
        section.extend([0]);
        Catalog::parse(&section).unwrap()
    }

    fn names(c: &Catalog, s: &Selection) -> Vec<(String, bool)> {
        s.tests
            .iter()
            .map(|t| (c.tests[t.index].name().to_owned(), t.run))
            .collect()
    }

    fn args(f: impl FnOnce(&mut TestArgs)) -> TestArgs {
        let mut a = TestArgs::default();
        f(&mut a);
        a
    }

    #[test]
    fn records_are_read_in_source_order() {
        let c = catalog();
        let order: Vec<&str> = c.tests.iter().map(TestRecord::name).collect();
        assert_eq!(
            order,
            ["zeta_first", "mid::faults", "mid::slow", "alpha_last"]
        );
        assert!(c.tests[1].should_panic && !c.tests[1].ignore);
        assert_eq!(c.tests[1].display_name(), "mid::faults - should panic");
        assert_eq!(c.tests[2].reason.as_deref(), Some("takes minutes"));
        assert_eq!(c.tests[0].reason, None);
        assert_eq!(Catalog::parse(&[]).unwrap().tests.len(), 0);
    }

    #[test]
    fn malformed_sections_are_errors() {
        assert!(Catalog::parse(b"\x01k::t\x1ff\x1f1\x1f1\x1f\x1f").is_err());
        assert!(Catalog::parse(b"\x01k::t\x1ff\x1f1\x1f1\x1f\x02").is_err());
        assert!(Catalog::parse(b"\x01k::t\x1ff\x1fx\x1f1\x1f\x1f\x02").is_err());
        assert!(Catalog::parse(b"junk").is_err());
    }

    #[test]
    fn default_selection_runs_all_but_ignored() {
        let c = catalog();
        let s = c.select(&TestArgs::default());
        assert_eq!(
            names(&c, &s),
            [
                ("zeta_first".into(), true),
                ("mid::faults".into(), true),
                ("mid::slow".into(), false),
                ("alpha_last".into(), true)
            ]
        );
        assert_eq!(s.filtered_out, 0);
        assert!(s.runs_any());
    }

    #[test]
    fn filters_skip_and_exact() {
        let c = catalog();
        let s = c.select(&args(|a| a.filters = vec!["mid".into(), "last".into()]));
        assert_eq!(names(&c, &s).len(), 3);
        assert_eq!(s.filtered_out, 1);

        let s = c.select(&args(|a| a.skip = vec!["mid".into()]));
        assert_eq!(
            names(&c, &s),
            [("zeta_first".into(), true), ("alpha_last".into(), true)]
        );
        assert_eq!(s.filtered_out, 2);

        // --exact: whole names only, for filters and --skip alike.
        let s = c.select(&args(|a| {
            a.filters = vec!["mid".into(), "mid::faults".into(), "alpha_last".into()];
            a.skip = vec!["alpha".into()];
            a.exact = true;
        }));
        assert_eq!(
            names(&c, &s),
            [("mid::faults".into(), true), ("alpha_last".into(), true)]
        );
        let s = c.select(&args(|a| {
            a.skip = vec!["alpha_last".into()];
            a.exact = true;
        }));
        assert_eq!(s.filtered_out, 1);

        let s = c.select(&args(|a| a.filters = vec!["nothing".into()]));
        assert!(s.tests.is_empty() && !s.runs_any());
        assert_eq!(s.filtered_out, 4);
    }

    #[test]
    fn ignored_and_include_ignored() {
        let c = catalog();
        let s = c.select(&args(|a| a.ignored = RunIgnored::Only));
        assert_eq!(names(&c, &s), [("mid::slow".into(), true)]);
        assert_eq!(s.filtered_out, 3);
        let s = c.select(&args(|a| a.ignored = RunIgnored::Also));
        assert!(s.tests.iter().all(|t| t.run));
        assert_eq!(s.tests.len(), 4);
    }

    #[test]
    fn list_is_libtest_format() {
        let c = catalog();
        let all = c.select(&TestArgs::default());
        assert_eq!(
            c.list(&all, false),
            "zeta_first: test\nmid::faults: test\nmid::slow: test\nalpha_last: test\n\n\
             4 tests, 0 benchmarks\n"
        );
        let one = c.select(&args(|a| a.ignored = RunIgnored::Only));
        assert_eq!(
            c.list(&one, false),
            "mid::slow: test\n\n1 test, 0 benchmarks\n"
        );
        assert_eq!(c.list(&one, true), "mid::slow: test\n");
        let none = c.select(&args(|a| a.filters = vec!["nothing".into()]));
        assert_eq!(c.list(&none, false), "0 tests, 0 benchmarks\n");
    }

    #[test]
    fn bitmap_names_the_tests_to_run() {
        let c = catalog();
        // Tests 0, 1, 3 run; 2 is ignored.
        assert_eq!(c.select(&TestArgs::default()).bitmap(4), "b");
        let s = Selection {
            tests: [1, 4, 9]
                .iter()
                .map(|&index| Selected { index, run: true })
                .collect(),
            filtered_out: 0,
        };
        assert_eq!(s.bitmap(10), "212");
        assert_eq!(Selection::default().bitmap(0), "");
    }

    #[test]
    fn a_plain_kernel_is_one_test_named_after_its_binary() {
        use std::path::Path;
        let name = plain_test_name(Path::new("target/x/kheap_example-a1b166e906e68001"));
        assert_eq!(name, "kheap_example");
        assert_eq!(plain_test_name(Path::new("/bin/kernel-1")), "kernel-1");
        let one = Catalog::single(name);
        let args = |filters: &[&str]| TestArgs {
            filters: filters.iter().map(|f| f.to_string()).collect(),
            ..TestArgs::default()
        };
        assert!(one.select(&args(&["example"])).runs_any());
        let none = one.select(&args(&["smp"]));
        assert!(!none.runs_any());
        assert_eq!(none.filtered_out, 1);
    }
}
