//! The kernel's test framework: `#[test_case]` functions run inside QEMU and report over serial.
//!
//! Each test kernel (the library's unit tests, and every file in `tests/`) collects its tests with
//! `custom_test_frameworks` and hands them to [`runner`]. The kernel prints machine-readable
//! `@@ktest` marker lines; the host runner in `boot/` turns them into cargo-style output
//! (`test name ... ok`, `test result: ok. N passed; M failed`).
//!
//! A failing test panics. A panic cannot be unwound here, so the panic handler reports the test as
//! failed and exits QEMU with [`QemuExitCode::Resume`]; the runner boots the kernel again with the
//! index of the next test in fw_cfg (`opt/ktest/start`), so tests after a failure still run. The
//! same mechanism ends a [`ShouldPanic`] test that panicked as expected. A test that hangs is killed
//! by the runner's per-test timeout and reported by name.
//!
//! A test kernel gets its entry point, its `main` (init the kernel, run the tests, report) and its
//! panic handler from [`test_kernel!`](crate::test_kernel); only the crate attributes that
//! `custom_test_frameworks` needs are written out in each file, because a macro cannot supply them.
//!
//! Marker protocol, one per line: `@@ktest plan <tests> <filtered-out>` (first boot only),
//! `@@ktest start <index> <name>`, `@@ktest ok <index>`, `@@ktest fail <index>`, `@@ktest done`.

use core::fmt::{self, Write};
use core::panic::PanicInfo;

use spin::Mutex;

use crate::qemu::{QemuExitCode, exit_qemu};
use crate::{fw_cfg, serial_println};

/// A test the runner can run.
pub trait Testable {
    /// The test's name as printed, e.g. `heap::tests::boxes_work`.
    fn name(&self) -> &'static str;
    /// Whether the test passes by panicking (or faulting).
    fn should_panic(&self) -> bool {
        false
    }
    /// For should-panic tests: text the panic message must contain.
    fn expected(&self) -> Option<&'static str> {
        None
    }
    /// Runs the test; a panic means failure (or success, for should-panic tests).
    fn run(&self);
}

impl<T: Fn()> Testable for T {
    fn name(&self) -> &'static str {
        let full = core::any::type_name::<T>();
        // Drop the crate name, as cargo's test harness does.
        full.split_once("::").map_or(full, |(_, rest)| rest)
    }

    fn run(&self) {
        self()
    }
}

/// A test that passes only if it panics (or triggers a fault that the handlers turn into a
/// panic), optionally with a message containing some text. Register it with
/// `#[test_case] static NAME: ShouldPanic = ShouldPanic::new("name", function);`.
#[derive(Debug)]
pub struct ShouldPanic {
    name: &'static str,
    expected: Option<&'static str>,
    test: fn(),
}

impl ShouldPanic {
    /// A should-panic test called `name` running `test`.
    pub const fn new(name: &'static str, test: fn()) -> Self {
        Self {
            name,
            expected: None,
            test,
        }
    }

    /// Also require the panic message to contain `text`.
    pub const fn expecting(self, text: &'static str) -> Self {
        Self {
            expected: Some(text),
            ..self
        }
    }
}

impl Testable for ShouldPanic {
    fn name(&self) -> &'static str {
        self.name
    }
    fn should_panic(&self) -> bool {
        true
    }
    fn expected(&self) -> Option<&'static str> {
        self.expected
    }
    fn run(&self) {
        (self.test)()
    }
}

#[derive(Clone, Copy)]
struct Current {
    index: usize,
    should_panic: bool,
    expected: Option<&'static str>,
}

static CURRENT: Mutex<Option<Current>> = Mutex::new(None);

/// Maximum length of the test-name filter passed through fw_cfg.
const FILTER_MAX: usize = 256;

/// Runs `tests` from the index the runner passed (0 on the first boot), skipping those that do
/// not match the runner's name filter.
pub fn runner(tests: &[&dyn Testable]) {
    let mut start_buf = [0u8; 20];
    let start = fw_cfg::read_file("opt/ktest/start", &mut start_buf)
        .and_then(|b| core::str::from_utf8(b).ok())
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut filter_buf = [0u8; FILTER_MAX];
    let filter = fw_cfg::read_file("opt/ktest/filter", &mut filter_buf)
        .and_then(|b| core::str::from_utf8(b).ok())
        .unwrap_or("");
    let mut exact_buf = [0u8; 1];
    let exact = fw_cfg::read_file("opt/ktest/exact", &mut exact_buf).is_some();
    let selected = |t: &dyn Testable| matches_filter(t.name(), filter, exact);

    if start == 0 {
        let planned = tests.iter().filter(|t| selected(**t)).count();
        serial_println!("@@ktest plan {} {}", planned, tests.len() - planned);
    }
    for (index, test) in tests.iter().enumerate().skip(start) {
        if !selected(*test) {
            continue;
        }
        *CURRENT.lock() = Some(Current {
            index,
            should_panic: test.should_panic(),
            expected: test.expected(),
        });
        serial_println!("@@ktest start {} {}", index, test.name());
        test.run();
        *CURRENT.lock() = None;
        if test.should_panic() {
            serial_println!("note: test did not panic as expected");
            serial_println!("@@ktest fail {}", index);
        } else {
            serial_println!("@@ktest ok {}", index);
        }
    }
}

/// `filter` is a space-separated list of patterns; a test is selected if it contains any of them
/// (or equals one, with `--exact`). An empty filter selects everything.
fn matches_filter(name: &str, filter: &str, exact: bool) -> bool {
    let mut patterns = filter.split(' ').filter(|p| !p.is_empty()).peekable();
    if patterns.peek().is_none() {
        return true;
    }
    patterns.any(|p| if exact { name == p } else { name.contains(p) })
}

/// Ends a test kernel after [`runner`] returned: reports completion and leaves QEMU successfully.
pub fn finish() -> ! {
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
/// #[test_case]
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
    use super::matches_filter;

    #[test_case]
    fn filter_matches_substrings_and_exact_names() {
        assert!(matches_filter("heap::boxes", "", false));
        assert!(matches_filter("heap::boxes", "box", false));
        assert!(matches_filter("heap::boxes", "nothing box", false));
        assert!(!matches_filter("heap::boxes", "vec", false));
        assert!(matches_filter("heap::boxes", "heap::boxes", true));
        assert!(!matches_filter("heap::boxes", "box", true));
    }

    #[test_case]
    fn fw_cfg_reports_missing_files_as_none() {
        let mut buf = [0u8; 8];
        assert!(crate::fw_cfg::read_file("opt/ktest/no-such-file", &mut buf).is_none());
    }
}
