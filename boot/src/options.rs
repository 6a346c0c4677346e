//! What the runner is told: its arguments (the kernel, then cargo's test arguments) and the
//! environment.
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `KERNEL_QEMU_ARGS` | extra QEMU arguments, split at whitespace (after the kernel's own `kernel::qemu_args!`) | none |
//! | `KERNEL_BOOT` | `bios` or `uefi` | `bios` |
//! | `KERNEL_KEEP_IMAGE` | `1`: keep the disk image (`target/boot-images/<kernel>.bios.img`) | `0` |
//! | `KERNEL_GDB` | `1`: QEMU waits for GDB on `localhost:1234`; no time limits | `0` |
//! | `KERNEL_TIMEOUT` | seconds for a whole `cargo run` boot | 900 |
//! | `KTEST_TIMEOUT` | seconds for one kernel test | 180 |
//! | `KERNEL_BOOT_TIMEOUT` | seconds from starting QEMU to the kernel's first serial output | 30 |
//! | `KERNEL_HEAP_PICTURE` | `1`: every kernel draws its heap (SVG under `target/heap-pictures/`); `0`: none does | the kernel decides (`cargo run`: yes) |
//!
//! A limit of `0` means no limit. Flags take `1`/`0` (also `true`/`false`, `yes`/`no`, or empty for
//! off). A value that does not parse is an error naming the variable; an unknown `KERNEL_*` or
//! `KTEST_*` variable (a typo?) gets a warning.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Default limit for a whole `cargo run` boot, in seconds (QEMU runs without KVM here: slow).
pub const DEFAULT_RUN_TIMEOUT_SECS: u64 = 900;
/// Default limit for one kernel test, in seconds.
pub const DEFAULT_TEST_TIMEOUT_SECS: u64 = 180;
/// Default limit from starting QEMU to the first byte on the serial port, in seconds. A kernel
/// prints within a few seconds under TCG even with gigabytes of RAM; this only needs to be long
/// enough for a loaded machine.
pub const DEFAULT_BOOT_TIMEOUT_SECS: u64 = 30;

/// The environment variables the runner reads.
pub const VARIABLES: [&str; 8] = [
    "KERNEL_QEMU_ARGS",
    "KERNEL_BOOT",
    "KERNEL_KEEP_IMAGE",
    "KERNEL_GDB",
    "KERNEL_TIMEOUT",
    "KTEST_TIMEOUT",
    "KERNEL_BOOT_TIMEOUT",
    "KERNEL_HEAP_PICTURE",
];

/// Everything the runner was told, from its arguments and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The kernel ELF cargo built.
    pub kernel: PathBuf,
    /// cargo's test arguments.
    pub test: TestArgs,
    /// `KERNEL_QEMU_ARGS`.
    pub extra_qemu_args: Vec<String>,
    /// `KERNEL_BOOT=uefi`.
    pub uefi: bool,
    /// `KERNEL_KEEP_IMAGE`.
    pub keep_image: bool,
    /// `KERNEL_GDB`.
    pub gdb: bool,
    /// `KERNEL_TIMEOUT`; `None`: no limit.
    pub run_timeout: Option<Duration>,
    /// `KTEST_TIMEOUT`; `None`: no limit.
    pub test_timeout: Option<Duration>,
    /// `KERNEL_BOOT_TIMEOUT`; `None`: no limit.
    pub boot_timeout: Option<Duration>,
    /// `KERNEL_HEAP_PICTURE`, passed to the kernel in fw_cfg `opt/kheap/picture`; `None`: unset,
    /// the kernel decides.
    pub heap_picture: Option<bool>,
}

/// Which tests `--ignored` / `--include-ignored` ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunIgnored {
    /// Run the tests that are not `#[ignore]`d; report the others as ignored.
    #[default]
    No,
    /// `--ignored`: run only the ignored tests.
    Only,
    /// `--include-ignored`: run all of them.
    Also,
}

/// cargo's test arguments, as libtest takes them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TestArgs {
    /// Positional arguments: run tests whose names contain (or, with `--exact`, equal) one of them.
    pub filters: Vec<String>,
    /// `--skip NAME` (repeatable): leave out tests whose names contain (or equal) one of them.
    pub skip: Vec<String>,
    /// `--exact`.
    pub exact: bool,
    /// `--list`: print the tests, run nothing.
    pub list: bool,
    /// `--ignored` / `--include-ignored`.
    pub ignored: RunIgnored,
    /// `-q`/`--quiet` or `--format terse`: one character per test.
    pub terse: bool,
}

impl TestArgs {
    /// Whether any argument was given (a plain kernel takes none).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Why the arguments or the environment cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionError {
    /// No kernel path: the runner was not started by cargo.
    NoKernel,
    /// `--help`: not an error, the caller prints [`USAGE`].
    Help,
    /// An option libtest has that this runner does not.
    UnknownOption(String),
    /// An option that needs a value came last.
    MissingValue(String),
    /// An option's value is not one this runner accepts.
    BadValue {
        /// The option.
        option: String,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// Two options that exclude each other.
    Conflict(&'static str, &'static str),
    /// An environment variable with a value that does not parse.
    BadVariable {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoKernel => write!(f, "no kernel given\n{USAGE}"),
            Self::Help => f.write_str(USAGE),
            Self::UnknownOption(o) => {
                write!(f, "unrecognized option `{o}` for a kernel test\n{USAGE}")
            }
            Self::MissingValue(o) => write!(f, "option `{o}` needs a value"),
            Self::BadValue {
                option,
                value,
                expected,
            } => write!(f, "`{option} {value}`: expected {expected}"),
            Self::Conflict(a, b) => write!(f, "the options {a} and {b} exclude each other"),
            Self::BadVariable {
                name,
                value,
                expected,
            } => write!(f, "{name}={value:?}: expected {expected}"),
        }
    }
}

/// What the runner accepts after the kernel's path (cargo passes what follows `--`).
pub const USAGE: &str = "\
usage: boot <kernel-elf> [FILTER...] [OPTIONS]   (normally started by `cargo run` / `cargo test`)
test options, as for cargo's own test harness:
  FILTER              run tests whose names contain FILTER (any of several)
  --exact             filters and --skip match whole names only
  --skip NAME         leave out tests whose names contain NAME (repeatable)
  --list              list the tests, run nothing
  --ignored           run only #[ignore]d tests
  --include-ignored   run #[ignore]d tests too
  -q, --quiet         one character per test (also --format terse)
  --nocapture, --show-output, --test-threads N, --color WHEN: accepted, no effect
    (kernel output is always shown; tests run one at a time)
environment: KERNEL_QEMU_ARGS, KERNEL_BOOT, KERNEL_KEEP_IMAGE, KERNEL_GDB, KERNEL_TIMEOUT,
  KTEST_TIMEOUT, KERNEL_BOOT_TIMEOUT, KERNEL_HEAP_PICTURE (see README.md)";

/// Parses the runner's arguments (without the program name) and its environment (`env` looks a
/// variable up).
pub fn parse(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Options, OptionError> {
    let mut args = args.into_iter();
    let kernel = args
        .next()
        .map(PathBuf::from)
        .ok_or(OptionError::NoKernel)?;
    let test = parse_test_args(args)?;
    let boot = env("KERNEL_BOOT").unwrap_or_default();
    let uefi = match boot.as_str() {
        "" | "bios" => false,
        "uefi" => true,
        _ => {
            return Err(OptionError::BadVariable {
                name: "KERNEL_BOOT",
                value: boot,
                expected: "`bios` or `uefi`",
            });
        }
    };
    Ok(Options {
        kernel,
        test,
        extra_qemu_args: env("KERNEL_QEMU_ARGS")
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        uefi,
        keep_image: flag(&env, "KERNEL_KEEP_IMAGE")?,
        gdb: flag(&env, "KERNEL_GDB")?,
        run_timeout: seconds(&env, "KERNEL_TIMEOUT", DEFAULT_RUN_TIMEOUT_SECS)?,
        test_timeout: seconds(&env, "KTEST_TIMEOUT", DEFAULT_TEST_TIMEOUT_SECS)?,
        boot_timeout: seconds(&env, "KERNEL_BOOT_TIMEOUT", DEFAULT_BOOT_TIMEOUT_SECS)?,
        heap_picture: match env("KERNEL_HEAP_PICTURE") {
            Some(_) => Some(flag(&env, "KERNEL_HEAP_PICTURE")?),
            None => None,
        },
    })
}

/// libtest's arguments, as far as they mean something for kernel tests.
fn parse_test_args(args: impl Iterator<Item = String>) -> Result<TestArgs, OptionError> {
    let mut t = TestArgs::default();
    let mut args = args.peekable();
    let mut only_positional = false;
    let (mut only_ignored, mut include_ignored) = (false, false);
    while let Some(arg) = args.next() {
        if only_positional || !arg.starts_with('-') || arg == "-" {
            t.filters.push(arg);
            continue;
        }
        // `--name=value` or `--name value`.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| OptionError::MissingValue(name.to_owned()))
        };
        match name.as_str() {
            "--" => only_positional = true,
            "-h" | "--help" => return Err(OptionError::Help),
            "--exact" => t.exact = true,
            "--list" => t.list = true,
            "--skip" => t.skip.push(value(&name)?),
            "--ignored" => only_ignored = true,
            "--include-ignored" => include_ignored = true,
            "-q" | "--quiet" => t.terse = true,
            "--format" => match value(&name)?.as_str() {
                "pretty" => t.terse = false,
                "terse" => t.terse = true,
                other => {
                    return Err(OptionError::BadValue {
                        option: name,
                        value: other.to_owned(),
                        expected: "`pretty` or `terse` (the kernel runner has no JSON output)",
                    });
                }
            },
            // Meaningful for threads and captured output, which kernel tests do not have.
            "--nocapture" | "--no-capture" | "--show-output" => {}
            "--test-threads" | "--color" | "-Z" => {
                value(&name)?;
            }
            _ => return Err(OptionError::UnknownOption(arg)),
        }
    }
    t.ignored = match (only_ignored, include_ignored) {
        (false, false) => RunIgnored::No,
        (true, false) => RunIgnored::Only,
        (false, true) => RunIgnored::Also,
        (true, true) => return Err(OptionError::Conflict("--ignored", "--include-ignored")),
    };
    Ok(t)
}

/// A `0`/`1` variable.
fn flag(env: &impl Fn(&str) -> Option<String>, name: &'static str) -> Result<bool, OptionError> {
    let Some(value) = env(name) else {
        return Ok(false);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        _ => Err(OptionError::BadVariable {
            name,
            value,
            expected: "1 (on) or 0 (off)",
        }),
    }
}

/// A limit in whole seconds; `0` is no limit.
fn seconds(
    env: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
) -> Result<Option<Duration>, OptionError> {
    let secs = match env(name) {
        None => default,
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map_err(|_| OptionError::BadVariable {
                name,
                value: v,
                expected: "a whole number of seconds (0 for no limit)",
            })?,
    };
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

/// The `KERNEL_*` / `KTEST_*` variables among `vars` that the runner does not know (typos, or
/// options of another version).
pub fn unknown_variables(vars: impl Iterator<Item = String>) -> Vec<String> {
    let mut unknown: Vec<String> = vars
        .filter(|v| v.starts_with("KERNEL_") || v.starts_with("KTEST_"))
        .filter(|v| !VARIABLES.contains(&v.as_str()))
        .collect();
    unknown.sort();
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(args: &[&str], vars: &[(&str, &str)]) -> Result<Options, OptionError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse(
            std::iter::once("kernel.elf")
                .chain(args.iter().copied())
                .map(str::to_owned),
            |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
        )
    }

    fn test_args(args: &[&str]) -> TestArgs {
        parse_with(args, &[]).unwrap().test
    }

    #[test]
    fn defaults() {
        let o = parse_with(&[], &[]).unwrap();
        assert_eq!(o.kernel, PathBuf::from("kernel.elf"));
        assert!(o.test.is_empty());
        assert!(!o.uefi && !o.keep_image && !o.gdb);
        assert_eq!(o.run_timeout, Some(Duration::from_secs(900)));
        assert_eq!(o.test_timeout, Some(Duration::from_secs(180)));
        assert_eq!(o.boot_timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn libtest_arguments() {
        let t = test_args(&[
            "heap",
            "--skip",
            "slow",
            "--skip=huge",
            "--exact",
            "--include-ignored",
            "vec",
        ]);
        assert_eq!(t.filters, ["heap", "vec"]);
        assert_eq!(t.skip, ["slow", "huge"]);
        assert!(t.exact && !t.list);
        assert_eq!(t.ignored, RunIgnored::Also);
        assert_eq!(test_args(&["--ignored"]).ignored, RunIgnored::Only);
        assert!(test_args(&["--list"]).list);
        assert!(test_args(&["-q"]).terse);
        assert!(test_args(&["--format", "terse"]).terse);
        // Accepted and without effect.
        assert!(test_args(&["--nocapture", "--test-threads", "4", "--color=never"]).is_empty());
        // After `--`, everything is a filter.
        assert_eq!(test_args(&["--", "--list"]).filters, ["--list"]);
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert_eq!(
            parse_with(&["--bogus"], &[]),
            Err(OptionError::UnknownOption("--bogus".into()))
        );
        assert_eq!(
            parse_with(&["--skip"], &[]),
            Err(OptionError::MissingValue("--skip".into()))
        );
        assert!(matches!(
            parse_with(&["--format", "json"], &[]),
            Err(OptionError::BadValue { .. })
        ));
        assert_eq!(
            parse_with(&["--ignored", "--include-ignored"], &[]),
            Err(OptionError::Conflict("--ignored", "--include-ignored"))
        );
        assert_eq!(
            parse(std::iter::empty(), |_| None),
            Err(OptionError::NoKernel)
        );
    }

    #[test]
    fn zero_means_no_limit() {
        let o = parse_with(
            &[],
            &[
                ("KERNEL_TIMEOUT", "0"),
                ("KTEST_TIMEOUT", "0"),
                ("KERNEL_BOOT_TIMEOUT", "0"),
            ],
        )
        .unwrap();
        assert_eq!(o.run_timeout, None);
        assert_eq!(o.test_timeout, None);
        assert_eq!(o.boot_timeout, None);
        let o = parse_with(&[], &[("KTEST_TIMEOUT", " 5 ")]).unwrap();
        assert_eq!(o.test_timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn bad_variables_are_errors_naming_the_variable() {
        for (name, value) in [
            ("KERNEL_TIMEOUT", "soon"),
            ("KTEST_TIMEOUT", "-1"),
            ("KERNEL_BOOT_TIMEOUT", "1.5"),
            ("KERNEL_KEEP_IMAGE", "maybe"),
            ("KERNEL_GDB", "2"),
            ("KERNEL_BOOT", "pxe"),
        ] {
            let err = parse_with(&[], &[(name, value)]).unwrap_err();
            assert!(
                matches!(&err, OptionError::BadVariable { name: n, .. } if *n == name),
                "{name}={value}: {err:?}"
            );
            assert!(err.to_string().starts_with(&format!("{name}=\"{value}\"")));
        }
    }

    #[test]
    fn flags_and_boot_kind() {
        let o = parse_with(
            &[],
            &[
                ("KERNEL_KEEP_IMAGE", "1"),
                ("KERNEL_GDB", "yes"),
                ("KERNEL_BOOT", "uefi"),
                ("KERNEL_QEMU_ARGS", " -m 64M  -smp 2 "),
            ],
        )
        .unwrap();
        assert!(o.keep_image && o.gdb && o.uefi);
        assert_eq!(o.extra_qemu_args, ["-m", "64M", "-smp", "2"]);
        let o = parse_with(&[], &[("KERNEL_KEEP_IMAGE", "0"), ("KERNEL_GDB", "")]).unwrap();
        assert!(!o.keep_image && !o.gdb);
        assert_eq!(o.heap_picture, None);
        let o = parse_with(&[], &[("KERNEL_HEAP_PICTURE", "1")]).unwrap();
        assert_eq!(o.heap_picture, Some(true));
        let o = parse_with(&[], &[("KERNEL_HEAP_PICTURE", "0")]).unwrap();
        assert_eq!(o.heap_picture, Some(false));
    }

    #[test]
    fn unknown_variables_are_found() {
        let vars = ["KERNEL_TIMOUT", "KERNEL_TIMEOUT", "PATH", "KTEST_FILTER"];
        assert_eq!(
            unknown_variables(vars.iter().map(|s| (*s).to_owned())),
            ["KERNEL_TIMOUT", "KTEST_FILTER"]
        );
    }
}
