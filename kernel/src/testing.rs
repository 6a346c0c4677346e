//! The kernel's test framework: `#[kernel::test]` functions run inside QEMU and report over serial.
//!
//! # Writing tests
//!
//! A test is a function marked `#[kernel::test]`, in a test kernel (a file in `tests/`) or in a
//! `#[cfg(test)]` module of the kernel library. It passes by returning and fails by panicking, as
//! a `#[test]` does; libtest's `#[should_panic]` and `#[ignore]` work the same way:
//!
//! ```ignore
//! #[kernel::test]
//! fn boxes_work() {
//!     assert_eq!(*alloc::boxed::Box::new(41) + 1, 42);
//! }
//!
//! /// A fault handled by the kernel's exception handlers is a panic too.
//! #[kernel::test]
//! #[should_panic(expected = "PAGE FAULT accessing 0xdeadb000")]
//! fn page_fault_names_the_address() {
//!     touch_unmapped();
//! }
//!
//! #[kernel::test]
//! #[ignore = "takes minutes under TCG"]
//! fn long_soak() { /* ... */ }
//! ```
//!
//! Tests run **in source order** (by file, then line), each reported as `test name ... ok` with
//! the name cargo would give it (`bench::tests::smoke_workloads_are_consistent`, or just the
//! function name in a file of `tests/`). The attribute (crate `kernel-macros`) rejects, at compile
//! time, what the framework cannot honour: arguments, a return type, `async`, a malformed
//! `should_panic`/`ignore`. The `#[test_case]` forms of earlier versions of this framework (a
//! `#[test_case] fn` or a `#[test_case] static _: ShouldPanic`) no longer compile, with an error
//! that says what to write instead: without `#[kernel::test]` a test has no source position and
//! the host runner does not know it.
//!
//! `cargo test` passes its arguments on as libtest would take them: name filters, `--exact`,
//! `--skip NAME`, `--list`, `--ignored`, `--include-ignored` (and `-q`); see `boot/`'s
//! documentation for the details.
//!
//! # How it works
//!
//! Each test kernel collects its tests with `custom_test_frameworks`: `#[kernel::test]` adds a
//! `#[test_case]` static [`Test`] next to the function, which reaches [`runner`]. It also writes the
//! same facts as a text record into the ELF section `.ktest_list`: the host runner in `boot/` reads
//! that section before booting, so it can list tests, apply filters and `--skip`, report ignored
//! tests, and skip booting a kernel none of whose tests are selected. Both sides put the tests in
//! the same order (file, line, column, name) and number them in it.
//!
//! The runner passes the numbers of the tests to run in fw_cfg (`opt/ktest/run`: a hex bitmap,
//! bit `i % 4` of digit `i / 4` for test `i`); a kernel booted without it runs every test that is
//! not `#[ignore]`d. The kernel prints machine-readable `@@ktest` marker lines; the host runner
//! turns them into cargo-style output (`test name ... ok`, `test result: ok. N passed; M failed`).
//!
//! A failing test panics. A panic cannot be unwound here, so the panic handler reports the test as
//! failed and exits QEMU with [`QemuExitCode::Resume`]; the runner boots the kernel again with the
//! number of the next test in fw_cfg (`opt/ktest/start`), so tests after a failure still run. The
//! same mechanism ends a `should_panic` test that panicked as expected. A test that hangs is killed
//! by the runner's per-test timeout and reported by name.
//!
//! A test kernel gets its entry point, its `main` (init the kernel, run the tests, report) and its
//! panic handler from [`test_kernel!`](crate::test_kernel); only the crate attributes that
//! `custom_test_frameworks` needs are written out in each file, because a macro cannot supply them.
//!
//! Marker protocol, one per line: `@@ktest plan <tests in the kernel>` (each boot),
//! `@@ktest start <number> <name>`, `@@ktest ok <number>`, `@@ktest fail <number>`,
//! `@@ktest done`.

use core::cmp::Ordering;
use core::fmt::{self, Write};
use core::panic::PanicInfo;

use spin::Mutex;

use crate::qemu::{QemuExitCode, exit_qemu};
use crate::{fw_cfg, serial_println};

/// One test, as `#[kernel::test]` registers it (the fields are filled in by the attribute).
#[derive(Debug)]
pub struct Test {
    /// `module_path!()` and the function's name, e.g. `kernel::heap::tests::boxes_work`.
    pub name: &'static str,
    /// The source file of the test (`file!()`).
    pub file: &'static str,
    /// The line of its `#[kernel::test]` attribute.
    pub line: u32,
    /// The column of its `#[kernel::test]` attribute.
    pub column: u32,
    /// Whether the test passes by panicking (or by a fault the handlers turn into a panic).
    pub should_panic: bool,
    /// For should-panic tests: text the panic message must contain.
    pub expected: Option<&'static str>,
    /// `#[ignore]`: run only when asked (`--ignored`, `--include-ignored`).
    pub ignore: bool,
    /// The test function.
    pub run: fn(),
}

impl Test {
    /// The name as printed: without the crate name, as cargo's test harness prints it.
    pub fn short_name(&self) -> &'static str {
        short_name(self.name)
    }

    /// The order tests run in: source order (file, line, column), then name.
    fn source_cmp(&self, other: &Test) -> Ordering {
        (self.file, self.line, self.column, self.name).cmp(&(
            other.file,
            other.line,
            other.column,
            other.name,
        ))
    }
}

/// Drops the crate name from a test path, as cargo's test harness does.
fn short_name(name: &str) -> &str {
    name.split_once("::").map_or(name, |(_, rest)| rest)
}

/// What `#![test_runner(kernel::testing::runner)]` accepts: the [`Test`]s that `#[kernel::test]`
/// makes. The other implementations exist only to turn the test forms of earlier versions of this
/// framework into compile errors that say what to write instead (a `#[test_case]` function, a
/// `ShouldPanic` static).
pub trait Testable {
    /// The test's description.
    fn test(&self) -> &Test;
}

impl Testable for Test {
    fn test(&self) -> &Test {
        self
    }
}

/// Fails the build when instantiated: `Reject::<T>::TEST_CASE_FN` for a `#[test_case]` function,
/// `Reject::<T>::SHOULD_PANIC` for a `ShouldPanic` static (an assertion that depends on `T`, so it
/// is evaluated only for a type that is really used as a test).
struct Reject<T>(core::marker::PhantomData<T>);

impl<T> Reject<T> {
    const TEST_CASE_FN: () = panic!(
        "`#[test_case]` functions are not kernel tests: write `#[kernel::test]` instead of \
         `#[test_case]` above the function (see kernel/src/testing.rs)"
    );
    const SHOULD_PANIC: () = panic!(
        "`ShouldPanic` statics are not kernel tests: write `#[kernel::test]` and \
         `#[should_panic(expected = \"…\")]` above `fn name() {{ … }}` instead"
    );
}

impl<F: Fn()> Testable for F {
    fn test(&self) -> &Test {
        #[allow(clippy::let_unit_value)]
        let () = Reject::<F>::TEST_CASE_FN;
        unreachable!()
    }
}

/// The should-panic test of earlier versions of this framework, kept only so that a test written
/// the old way fails to build with a message saying what to write instead. Write
/// `#[kernel::test] #[should_panic(expected = "…")] fn name() { … }`.
#[deprecated(
    note = "write `#[kernel::test]` and `#[should_panic(expected = \"…\")]` above `fn name() { … }` instead"
)]
///
/// (Generic only so that the compile error comes where it is used as a test, not here.)
#[derive(Debug)]
pub struct ShouldPanic<F = fn()> {
    _test: F,
}

#[allow(deprecated)]
impl<F> Testable for ShouldPanic<F> {
    fn test(&self) -> &Test {
        #[allow(clippy::let_unit_value)]
        let () = Reject::<F>::SHOULD_PANIC;
        unreachable!()
    }
}

#[allow(deprecated)]
impl ShouldPanic {
    /// Kept for the error message only; see [`ShouldPanic`].
    pub const fn new(_name: &'static str, test: fn()) -> Self {
        Self { _test: test }
    }

    /// Kept for the error message only; see [`ShouldPanic`].
    pub const fn expecting(self, _text: &'static str) -> Self {
        self
    }
}

/// Start of a `.ktest_list` record.
const RECORD_START: u8 = 0x01;
/// End of a `.ktest_list` record.
const RECORD_END: u8 = 0x02;
/// Separates the fields of a record.
const FIELD_SEPARATOR: u8 = 0x1f;
/// Fields in a record: name, file, line, column, flags (`p` should panic, `i` ignored), reason.
const RECORD_FIELDS: usize = 6;

/// The length of a `.ktest_list` record (for `#[kernel::test]`'s expansion).
#[doc(hidden)]
pub const fn __record_len(record: &str) -> usize {
    record.len()
}

/// A `.ktest_list` record as bytes (for `#[kernel::test]`'s expansion): `\x01`, the fields
/// separated by `\x1f`, `\x02`. Fails to compile if the `#[ignore]` reason holds those bytes.
#[doc(hidden)]
pub const fn __record<const N: usize>(record: &str) -> [u8; N] {
    let bytes = record.as_bytes();
    assert!(bytes.len() == N && N >= 2);
    assert!(bytes[0] == RECORD_START && bytes[N - 1] == RECORD_END);
    let mut out = [0u8; N];
    let mut separators = 0;
    let mut i = 0;
    while i < N {
        let b = bytes[i];
        if b == FIELD_SEPARATOR {
            separators += 1;
        }
        assert!(
            b != 0 && ((b != RECORD_START && b != RECORD_END) || i == 0 || i == N - 1),
            "an `#[ignore]` reason must not contain the bytes 0x00, 0x01, 0x02 or 0x1f"
        );
        out[i] = b;
        i += 1;
    }
    assert!(
        separators == RECORD_FIELDS - 1,
        "an `#[ignore]` reason must not contain the bytes 0x00, 0x01, 0x02 or 0x1f"
    );
    out
}

#[derive(Clone, Copy)]
struct Current {
    index: usize,
    should_panic: bool,
    expected: Option<&'static str>,
}

static CURRENT: Mutex<Option<Current>> = Mutex::new(None);

/// Size of the buffer for the selection bitmap from fw_cfg: 4 tests per hex digit.
const SELECTION_MAX: usize = 1024;

/// The tests of a kernel in source order, with their numbers. Sorting without the heap (which a
/// test may be about to exhaust): each step looks for the next test after the previous one, which
/// is quadratic but trivial for the few dozen tests of one kernel.
fn source_order<'t>(tests: &'t [&'t dyn Testable]) -> impl Iterator<Item = (usize, &'t Test)> + 't {
    let mut last: Option<&Test> = None;
    (0..tests.len()).map_while(move |index| {
        let next = tests
            .iter()
            .map(|t| t.test())
            .filter(|t| last.is_none_or(|l| t.source_cmp(l) == Ordering::Greater))
            .min_by(|a, b| a.source_cmp(b))?;
        last = Some(next);
        Some((index, next))
    })
}

/// Which tests to run, as the runner passed them in fw_cfg `opt/ktest/run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Selection<'b> {
    /// No selection was passed (a boot without the runner): every test that is not ignored.
    NotIgnored,
    /// A hex bitmap over the test numbers.
    Bitmap(&'b [u8]),
}

impl Selection<'_> {
    fn includes(&self, index: usize, test: &Test) -> bool {
        match self {
            Self::NotIgnored => !test.ignore,
            Self::Bitmap(hex) => hex
                .get(index / 4)
                .and_then(|d| (*d as char).to_digit(16))
                .is_some_and(|d| d & (1 << (index % 4)) != 0),
        }
    }
}

/// Runs the selected `tests`, in source order, from the number the runner passed (0 on the first
/// boot).
pub fn runner(tests: &[&dyn Testable]) {
    let mut start_buf = [0u8; 20];
    let start = fw_cfg::read_file("opt/ktest/start", &mut start_buf)
        .and_then(|b| core::str::from_utf8(b).ok())
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut selection_buf = [0u8; SELECTION_MAX];
    let selection = match fw_cfg::read_file("opt/ktest/run", &mut selection_buf) {
        Some(hex) => Selection::Bitmap(hex),
        None => Selection::NotIgnored,
    };

    serial_println!("@@ktest plan {}", tests.len());
    for (index, test) in source_order(tests).skip(start) {
        if !selection.includes(index, test) {
            continue;
        }
        *CURRENT.lock() = Some(Current {
            index,
            should_panic: test.should_panic,
            expected: test.expected,
        });
        serial_println!("@@ktest start {} {}", index, test.short_name());
        (test.run)();
        *CURRENT.lock() = None;
        if test.should_panic {
            serial_println!("note: test did not panic as expected");
            serial_println!("@@ktest fail {}", index);
        } else {
            serial_println!("@@ktest ok {}", index);
        }
    }
}

/// Ends a test kernel after [`runner`] returned: reports completion and leaves QEMU successfully.
pub fn finish() -> ! {
    // On request (`KERNEL_HEAP_PICTURE=1`), the heap as the tests left it.
    crate::heap_picture::emit_if_requested("after the tests");
    serial_println!("@@ktest done");
    exit_qemu(QemuExitCode::Success)
}

/// The panic handler of test kernels: a panic inside a test is that test's outcome.
pub fn panic_handler(info: &PanicInfo<'_>) -> ! {
    let current = CURRENT.try_lock().and_then(|c| *c);
    match current {
        Some(cur) if cur.should_panic => {
            let mut msg = FixedBuf::new();
            let _ = write!(msg, "{}", info.message());
            match cur.expected {
                Some(text) if !msg.as_str().contains(text) => {
                    crate::panic::report(info, crate::panic::Detail::Full);
                    serial_println!("note: panic did not contain expected string `{}`", text);
                    serial_println!("@@ktest fail {}", cur.index);
                }
                _ => {
                    crate::panic::report(info, crate::panic::Detail::Brief);
                    serial_println!("@@ktest ok {}", cur.index);
                }
            }
            exit_qemu(QemuExitCode::Resume)
        }
        Some(cur) => {
            crate::panic::report(info, crate::panic::Detail::Full);
            serial_println!("@@ktest fail {}", cur.index);
            exit_qemu(QemuExitCode::Resume)
        }
        None => {
            serial_println!("kernel panic outside any test:");
            crate::panic::report(info, crate::panic::Detail::Full);
            exit_qemu(QemuExitCode::Failed)
        }
    }
}

/// The bootloader API, for [`test_kernel!`](crate::test_kernel)'s expansion, so that the macro does
/// not depend on what the calling crate names its dependencies.
#[doc(hidden)]
pub use bootloader_api as __bootloader_api;

/// Makes a crate a test kernel: expands to the bootloader entry point (with
/// [`BOOTLOADER_CONFIG`](crate::BOOTLOADER_CONFIG)), a `main` that brings the kernel up with
/// [`init`](crate::init), runs the collected tests through `test_main()` and ends with [`finish`],
/// and a `#[panic_handler]` that hands every panic to [`panic_handler`].
///
/// `test_kernel!(before_init = f)` also calls `f(&boot_info)` just before [`init`](crate::init),
/// for a test that must read the boot information (the memory map, say) while it is still there:
/// `init` takes the `&'static mut BootInfo` for good. `f` is a `fn(&BootInfo)`.
///
/// An init failure panics outside any test, which [`panic_handler`] reports as a failed boot.
///
/// The crate attributes cannot come from a macro, so every test kernel still starts with them;
/// `test_main` is the name `reexport_test_harness_main` must give the harness entry:
///
/// ```ignore
/// #![no_std]
/// #![no_main]
/// #![feature(custom_test_frameworks)]
/// #![test_runner(kernel::testing::runner)]
/// #![reexport_test_harness_main = "test_main"]
///
/// use bootloader_api::BootInfo;
///
/// kernel::qemu_args!("-m 32M");
/// kernel::test_kernel!(before_init = count_usable_regions);
///
/// fn count_usable_regions(boot_info: &BootInfo) {
///     // remember what the tests will need from the boot memory map
/// }
///
/// #[kernel::test]
/// fn boxes_work() {
///     assert_eq!(*alloc::boxed::Box::new(41) + 1, 42);
/// }
/// ```
///
/// With nothing to do before init, it is just `kernel::test_kernel!();`.
#[macro_export]
macro_rules! test_kernel {
    () => {
        $crate::test_kernel!(@kernel);
    };
    (before_init = $before:expr $(,)?) => {
        $crate::test_kernel!(@kernel $before);
    };
    (@kernel $($before:expr)?) => {
        $crate::testing::__bootloader_api::entry_point!(
            test_kernel_main,
            config = &$crate::BOOTLOADER_CONFIG
        );

        fn test_kernel_main(
            boot_info: &'static mut $crate::testing::__bootloader_api::BootInfo,
        ) -> ! {
            $(
                let before_init: fn(&$crate::testing::__bootloader_api::BootInfo) = $before;
                before_init(boot_info);
            )?
            if let ::core::result::Result::Err(e) = $crate::init(boot_info) {
                ::core::panic!("kernel init failed: {e}");
            }
            test_main();
            $crate::testing::finish()
        }

        #[panic_handler]
        fn test_kernel_panic(info: &::core::panic::PanicInfo<'_>) -> ! {
            $crate::testing::panic_handler(info)
        }
    };
}

/// A small stack buffer for formatting a panic message without the heap (which may be the thing
/// that failed). Text beyond its capacity is dropped.
struct FixedBuf {
    buf: [u8; 512],
    len: usize,
}

impl FixedBuf {
    const fn new() -> Self {
        Self {
            buf: [0; 512],
            len: 0,
        }
    }
    fn as_str(&self) -> &str {
        // Only whole `&str` pieces are appended, but truncation may split a character.
        match core::str::from_utf8(&self.buf[..self.len]) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&self.buf[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

impl Write for FixedBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Selection, Test, Testable, source_order};

    fn nothing() {}

    const fn test(name: &'static str, file: &'static str, line: u32, ignore: bool) -> Test {
        Test {
            name,
            file,
            line,
            column: 1,
            should_panic: false,
            expected: None,
            ignore,
            run: nothing,
        }
    }

    #[kernel::test]
    fn tests_run_in_source_order_across_files() {
        // Given in the alphabetical order rustc hands `#[test_case]`s over.
        let a = test("k::a::alpha", "src/b.rs", 30, false);
        let b = test("k::a::beta", "src/a.rs", 10, false);
        let c = test("k::a::gamma", "src/b.rs", 4, false);
        let d = test("k::a::delta", "src/a.rs", 2, false);
        let tests: [&dyn Testable; 4] = [&a, &b, &c, &d];
        let mut order = source_order(&tests).map(|(i, t)| (i, t.short_name()));
        assert_eq!(order.next(), Some((0, "a::delta")));
        assert_eq!(order.next(), Some((1, "a::beta")));
        assert_eq!(order.next(), Some((2, "a::gamma")));
        assert_eq!(order.next(), Some((3, "a::alpha")));
        assert_eq!(order.next(), None);
    }

    #[kernel::test]
    fn selection_bitmap_and_default_selection() {
        let plain = test("k::t", "f.rs", 1, false);
        let ignored = test("k::u", "f.rs", 2, true);
        // Digit 0 = 0b0101: tests 0 and 2; digit 1 = 0xa = 0b1010: tests 5 and 7.
        let bitmap = Selection::Bitmap(b"5a");
        let chosen: [bool; 9] = core::array::from_fn(|i| bitmap.includes(i, &plain));
        assert_eq!(
            chosen,
            [true, false, true, false, false, true, false, true, false]
        );
        assert!(Selection::NotIgnored.includes(0, &plain));
        assert!(!Selection::NotIgnored.includes(1, &ignored));
    }

    #[kernel::test]
    fn records_are_framed_for_the_host_runner() {
        const R: &str = "\x01k::t\x1ff.rs\x1f3\x1f5\x1fi\x1fslow\x02";
        let bytes: [u8; super::__record_len(R)] = super::__record(R);
        assert_eq!(&bytes, R.as_bytes());
    }

    #[kernel::test]
    fn fw_cfg_reports_missing_files_as_none() {
        let mut buf = [0u8; 8];
        assert!(crate::fw_cfg::read_file("opt/ktest/no-such-file", &mut buf).is_none());
    }
}
