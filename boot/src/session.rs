//! One `cargo run` or `cargo test` of a kernel: one or more QEMU boots, their output, and what the
//! runner prints and returns.
//!
//! A plain kernel boots once; its end (the debug-exit status, a time-out, a boot failure) is the
//! result. A test kernel boots as often as it takes: every test that fails by panicking ends a
//! boot, and the next boot starts after it (fw_cfg `opt/ktest/start`).
//!
//! Time limits, each `None` for no limit: from starting QEMU to its first serial byte
//! (`boot_timeout`); a whole plain boot (`run_timeout`); one test, from its start (`test_timeout`).

use std::fmt::Write as _;
use std::io::Write;
use std::process::ExitCode;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use crate::catalog::{Catalog, Selection, plural};
use crate::memory;
use crate::options::Options;
use crate::picture::{Fed, Pictures};
use crate::protocol::{Event, parse_line};
use crate::qemu::{self, Output, Qemu};

/// QEMU's status when the kernel wrote `QemuExitCode::Success` (0x10) to the debug-exit port.
pub const QEMU_SUCCESS: i32 = (0x10 << 1) | 1;
/// ... `QemuExitCode::Failed` (0x11).
pub const QEMU_FAILED: i32 = (0x11 << 1) | 1;
/// ... `QemuExitCode::Resume` (0x12): a test kernel reported one outcome and wants a reboot.
pub const QEMU_RESUME: i32 = (0x12 << 1) | 1;

/// Status cargo's own test harness uses for failed tests.
pub const TEST_FAILURE_STATUS: u8 = 101;

/// How often the screen is read while the machine has printed nothing.
const SCREEN_POLL: Duration = Duration::from_millis(1000);
/// How long to collect the lines of a bootloader panic message before stopping QEMU.
const PANIC_LINES_WAIT: Duration = Duration::from_millis(500);

/// What one QEMU boot ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootEnd {
    /// QEMU exited with this status (`None` if killed by a signal).
    Exited(Option<i32>),
    /// QEMU exited with an error status before the machine printed anything.
    QemuFailed {
        /// Its status.
        status: Option<i32>,
        /// What it printed on stderr.
        message: String,
    },
    /// Nothing came out of the serial port within the boot limit.
    NoOutput {
        /// The limit.
        waited: Duration,
        /// What the VGA text screen showed, if anything.
        screen: Option<String>,
    },
    /// The bootloader panicked before starting the kernel.
    BootloaderPanic {
        /// The screen, if that is where the panic was found; `None` if it came over serial (and
        /// was printed with the rest of the output).
        screen: Option<String>,
    },
    /// Before printing anything, the CPU stopped for good (halted with interrupts off): what the
    /// bootloader's panic handlers do, also where nothing reaches serial or the text screen.
    Stopped {
        /// What the VGA text screen showed, if anything.
        screen: Option<String>,
    },
    /// The time limit ran out and QEMU was killed.
    TimedOut(Duration),
}

/// What the runner knows about the machine it boots.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Every QEMU argument but the per-boot fw_cfg ones.
    pub qemu_args: Vec<String>,
    /// RAM given to QEMU (`None` if its `-m` could not be read: QEMU will judge it).
    pub ram: Option<u64>,
    /// Estimated RAM the bootloader needs for this kernel.
    pub min_ram: u64,
    /// Whether the screen can be read for bootloader messages (BIOS boot).
    pub read_screen: bool,
}

/// One kernel's run: the test state and the output.
#[derive(Debug)]
pub struct Session<'a, W: Write> {
    opts: &'a Options,
    machine: Machine,
    catalog: &'a Catalog,
    selection: Selection,
    test_mode: bool,
    out: W,
    /// The test running now.
    current: Option<usize>,
    /// The test whose outcome came last in this boot.
    last_reported: Option<usize>,
    /// Position in `selection.tests` up to which ignored tests have been reported.
    ignored_cursor: usize,
    passed: usize,
    ignored: usize,
    failed: Vec<String>,
    /// Terse mode: serial output since the last outcome, and that of failed tests.
    captured: Vec<String>,
    failure_output: Vec<(String, Vec<String>)>,
    /// Terse mode: characters on the current line.
    terse_column: usize,
    done: bool,
    /// Heap pictures the kernel prints.
    pictures: Pictures,
}

impl<'a, W: Write> Session<'a, W> {
    /// A session for a kernel: a test kernel if `catalog` is `Some`.
    pub fn new(opts: &'a Options, machine: Machine, catalog: Option<&'a Catalog>, out: W) -> Self {
        static EMPTY: Catalog = Catalog { tests: Vec::new() };
        let selection = catalog.map(|c| c.select(&opts.test)).unwrap_or_default();
        Self {
            opts,
            machine,
            catalog: catalog.unwrap_or(&EMPTY),
            selection,
            test_mode: catalog.is_some(),
            out,
            current: None,
            last_reported: None,
            ignored_cursor: 0,
            passed: 0,
            ignored: 0,
            failed: Vec::new(),
            captured: Vec::new(),
            failure_output: Vec::new(),
            terse_column: 0,
            done: false,
            pictures: Pictures::new(
                crate::paths::picture_dir(),
                crate::catalog::plain_test_name(&opts.kernel),
            ),
        }
    }

    /// Sends heap pictures to another directory (tests).
    pub fn with_picture_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.pictures = Pictures::new(dir, crate::catalog::plain_test_name(&self.opts.kernel));
        self
    }

    /// Runs the kernel: boots it (as often as its tests need) and reports.
    pub fn run(mut self) -> Result<ExitCode, String> {
        if !self.test_mode {
            let end = self.boot(0)?;
            if self.test_mode {
                // A test kernel without tests (no `.ktest_list`): it said so with `plan 0`.
                return Ok(self.finish_tests(end, Instant::now()));
            }
            return Ok(self.finish_run(&end));
        }
        let started = Instant::now();
        self.print(&format!(
            "\nrunning {}\n",
            plural(self.selection.tests.len(), "test")
        ));
        if !self.selection.runs_any() {
            return Ok(self.summary(started.elapsed()));
        }
        let mut start = 0;
        loop {
            self.last_reported = None;
            let end = self.boot(start)?;
            let next = match &end {
                BootEnd::Exited(Some(QEMU_SUCCESS)) if self.done => break,
                BootEnd::Exited(Some(QEMU_RESUME)) => match self.last_reported {
                    Some(i) => Some(i),
                    None => self.fail_current("the kernel rebooted without reporting a test"),
                },
                BootEnd::TimedOut(limit) => {
                    self.fail_current(&format!("timed out after {}s", limit.as_secs()))
                }
                other => {
                    let why = self.describe(other);
                    self.fail_current(&why)
                }
            };
            match next {
                Some(index) if index >= start => start = index + 1,
                _ => return Ok(self.finish_tests(end, started)),
            }
        }
        Ok(self.summary(started.elapsed()))
    }

    /// The end of a test run that stopped outside any test.
    fn finish_tests(&mut self, end: BootEnd, started: Instant) -> ExitCode {
        if !matches!(end, BootEnd::Exited(Some(QEMU_SUCCESS))) || !self.done {
            let why = match end {
                BootEnd::Exited(Some(QEMU_SUCCESS)) => {
                    "the kernel exited before finishing its tests".to_owned()
                }
                BootEnd::TimedOut(limit) => format!(
                    "the kernel timed out after {}s outside any test",
                    limit.as_secs()
                ),
                other => self.describe(&other),
            };
            self.flush_captured();
            eprintln!("error: test kernel failed outside any test: {why}");
            self.failed.push("<kernel outside tests>".into());
        }
        self.summary(started.elapsed())
    }

    /// Marks the running test failed for `why`; returns its number so the next boot skips it.
    fn fail_current(&mut self, why: &str) -> Option<usize> {
        let index = self.current.take()?;
        self.report(index, Outcome::Failed(why));
        Some(index)
    }

    /// What a boot end means, for an error message.
    fn describe(&self, end: &BootEnd) -> String {
        let mut why = match end {
            BootEnd::Exited(Some(QEMU_SUCCESS)) => "the kernel exited successfully".to_owned(),
            BootEnd::Exited(Some(QEMU_FAILED)) => "the kernel reported failure".to_owned(),
            BootEnd::Exited(Some(QEMU_RESUME)) => "the kernel asked for a reboot".to_owned(),
            BootEnd::Exited(Some(0)) => "QEMU exited (status 0) without the kernel reporting: \
                 the machine reset (a triple fault?)"
                .to_owned(),
            BootEnd::Exited(Some(s)) => {
                format!("QEMU exited with status {s} without the kernel reporting")
            }
            BootEnd::Exited(None) => "QEMU was killed by a signal".to_owned(),
            BootEnd::QemuFailed { status, message } => {
                let status = status.map_or_else(|| "a signal".to_owned(), |s| s.to_string());
                format!("QEMU failed to start (exit status {status}): {message}")
            }
            BootEnd::NoOutput { waited, screen } => {
                let mut s = format!(
                    "no output from the kernel within {}s of starting QEMU: the bootloader (or \
                     firmware) never started it, or it hung before printing",
                    waited.as_secs()
                );
                if let Some(screen) = screen {
                    let _ = write!(s, "; the screen shows:\n{}", indent(screen));
                }
                s
            }
            BootEnd::BootloaderPanic {
                screen: Some(screen),
            } => format!(
                "the bootloader panicked before starting the kernel; the screen shows:\n{}",
                indent(screen)
            ),
            BootEnd::BootloaderPanic { screen: None } => {
                "the bootloader panicked before starting the kernel (its message is above)"
                    .to_owned()
            }
            BootEnd::Stopped { screen } => {
                let mut s =
                    "the machine stopped (CPU halted with interrupts off) before the kernel \
                             printed anything: the bootloader failed where it cannot report (its \
                             early stages print only to the screen, and nothing before its last \
                             stage reads the kernel file)"
                        .to_owned();
                if let Some(screen) = screen {
                    let _ = write!(s, "; the screen shows:\n{}", indent(screen));
                }
                s
            }
            BootEnd::TimedOut(limit) => format!("timed out after {}s", limit.as_secs()),
        };
        let boot_failed = matches!(
            end,
            BootEnd::NoOutput { .. } | BootEnd::BootloaderPanic { .. } | BootEnd::Stopped { .. }
        );
        if let Some(ram) = self.machine.ram
            && boot_failed
            && ram < self.machine.min_ram
        {
            let need = memory::mib_ceil(self.machine.min_ram);
            let _ = write!(
                why,
                "\nnote: QEMU had {} of RAM; this kernel needs about {need} MiB to boot: the BIOS \
                 bootloader copies the kernel to 16 MiB and then needs about 4 MiB for page \
                 tables (see boot/src/memory.rs). Give it more, e.g. KERNEL_QEMU_ARGS=\"-m {need}M\"",
                mib(ram)
            );
        }
        why
    }

    fn finish_run(&mut self, end: &BootEnd) -> ExitCode {
        match end {
            BootEnd::Exited(Some(QEMU_SUCCESS)) => ExitCode::SUCCESS,
            BootEnd::TimedOut(limit) => {
                eprintln!(
                    "error: the kernel timed out after {}s (KERNEL_TIMEOUT; 0 for no limit)",
                    limit.as_secs()
                );
                ExitCode::FAILURE
            }
            other => {
                eprintln!("error: {}", self.describe(other));
                ExitCode::FAILURE
            }
        }
    }

    fn summary(&mut self, elapsed: Duration) -> ExitCode {
        self.report_ignored_before(usize::MAX);
        if self.terse_column > 0 {
            self.print("\n");
        }
        if !self.failure_output.is_empty() {
            self.print("\nfailures:\n");
            for (name, lines) in std::mem::take(&mut self.failure_output) {
                self.print(&format!("\n---- {name} output ----\n"));
                for line in lines {
                    self.print(&format!("{line}\n"));
                }
            }
        }
        if !self.failed.is_empty() {
            self.print("\nfailures:\n");
            for name in self.failed.clone() {
                self.print(&format!("    {name}\n"));
            }
        }
        let verdict = if self.failed.is_empty() {
            "ok"
        } else {
            "FAILED"
        };
        self.print(&format!(
            "\ntest result: {verdict}. {} passed; {} failed; {} ignored; 0 measured; {} filtered \
             out; finished in {:.2}s\n\n",
            self.passed,
            self.failed.len(),
            self.ignored,
            self.selection.filtered_out,
            elapsed.as_secs_f64()
        ));
        if self.failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(TEST_FAILURE_STATUS)
        }
    }

    /// Boots the kernel once, starting at test `start`, and echoes its serial output.
    fn boot(&mut self, start: usize) -> Result<BootEnd, String> {
        let mut args = self.machine.qemu_args.clone();
        if self.test_mode {
            let mut fw_cfg = |name: &str, value: &str| {
                args.push("-fw_cfg".into());
                args.push(format!("name=opt/ktest/{name},string={value}"));
            };
            if start > 0 {
                fw_cfg("start", &start.to_string());
            }
            fw_cfg("run", &self.selection.bitmap(self.catalog.tests.len()));
        }
        let mut qemu = Qemu::spawn(&args)?;
        let gdb = self.opts.gdb;
        let booted = Instant::now();
        let mut last_progress = booted;
        let mut seen_output = false;
        let mut next_screen_look = booted + SCREEN_POLL;
        loop {
            let now = Instant::now();
            // The limit that applies now, and since when.
            let (limit, since) = if gdb {
                (None, now)
            } else if !seen_output {
                (self.opts.boot_timeout, booted)
            } else if self.test_mode {
                (self.opts.test_timeout, last_progress)
            } else {
                (self.opts.run_timeout, booted)
            };
            if let Some(limit) = limit
                && now.duration_since(since) >= limit
            {
                let screen = if seen_output || !self.machine.read_screen {
                    None
                } else {
                    qemu.screen_text()
                };
                qemu.kill();
                return Ok(if seen_output {
                    BootEnd::TimedOut(limit)
                } else {
                    BootEnd::NoOutput {
                        waited: limit,
                        screen,
                    }
                });
            }
            let wait = limit.map_or(Duration::from_millis(250), |l| {
                (since + l)
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(250))
            });
            match qemu.output().recv_timeout(wait) {
                Ok(Output::Started) => {
                    seen_output = true;
                    qemu.release_stderr();
                }
                Ok(Output::Line(line)) => {
                    if is_bootloader_panic(&line) {
                        self.echo(&line);
                        let until = Instant::now() + PANIC_LINES_WAIT;
                        while let Ok(Output::Line(more)) = qemu
                            .output()
                            .recv_timeout(until.saturating_duration_since(Instant::now()))
                        {
                            self.echo(&more);
                        }
                        qemu.kill();
                        return Ok(BootEnd::BootloaderPanic { screen: None });
                    }
                    match self.handle_line(&line)? {
                        Line::Progress => last_progress = Instant::now(),
                        Line::Text => {}
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if !seen_output && !gdb && self.machine.read_screen && now >= next_screen_look {
                        next_screen_look = now + SCREEN_POLL;
                        let screen = qemu.screen_text();
                        if let Some(screen) = screen.clone().filter(|s| qemu::is_panic(s)) {
                            qemu.kill();
                            return Ok(BootEnd::BootloaderPanic {
                                screen: Some(screen),
                            });
                        }
                        if qemu.halted() == Some(true) {
                            qemu.kill();
                            return Ok(BootEnd::Stopped { screen });
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let (status, message) = qemu.wait()?;
                    let code = status.code();
                    return Ok(match code {
                        Some(QEMU_SUCCESS | QEMU_FAILED | QEMU_RESUME | 0) => BootEnd::Exited(code),
                        _ if !seen_output => BootEnd::QemuFailed {
                            status: code,
                            message,
                        },
                        _ => BootEnd::Exited(code),
                    });
                }
            }
        }
    }

    /// Handles one line of serial output.
    fn handle_line(&mut self, line: &str) -> Result<Line, String> {
        match self.pictures.feed(line) {
            Fed::No => {}
            Fed::Taken => return Ok(Line::Text),
            Fed::Written(Ok(path)) => {
                self.echo(&format!("heap picture: {}", path.display()));
                return Ok(Line::Text);
            }
            Fed::Written(Err(e)) => {
                self.echo(&format!("warning: heap picture not drawn: {e}"));
                return Ok(Line::Text);
            }
            Fed::BrokenOff(label) => {
                self.echo(&format!("warning: heap picture `{label}` broke off"));
            }
        }
        let (text, event) = parse_line(line);
        if !text.is_empty() || event.is_none() {
            self.echo(text);
        }
        let Some(event) = event else {
            return Ok(Line::Text);
        };
        match event {
            Event::Plan { tests } => {
                if !self.test_mode {
                    if tests > 0 {
                        return Err(format!(
                            "the kernel reports {tests} tests but has no `{}` section: were they \
                             written with `#[kernel::test]`?",
                            crate::catalog::SECTION
                        ));
                    }
                    self.test_mode = true;
                    self.print("\nrunning 0 tests\n");
                } else if tests != self.catalog.tests.len() {
                    return Err(format!(
                        "the kernel has {tests} tests but its `{}` section lists {}",
                        crate::catalog::SECTION,
                        self.catalog.tests.len()
                    ));
                }
            }
            Event::Start { index, name } => {
                let known = self.catalog.tests.get(index).map(|t| t.name());
                if known != Some(name.as_str()) {
                    return Err(format!(
                        "the kernel started test {index} `{name}`, but the test list has {known:?} \
                         there"
                    ));
                }
                self.report_ignored_before(index);
                self.current = Some(index);
                if !self.opts.test.terse {
                    // Flush what is printed before the outcome, as libtest's `test name ... `.
                    let _ = self.out.flush();
                }
            }
            Event::Ok { index } | Event::Fail { index } => {
                let ok = matches!(event, Event::Ok { .. });
                if self.current.take() != Some(index) {
                    return Err(format!(
                        "the kernel reported test {index} without starting it"
                    ));
                }
                self.report(
                    index,
                    if ok {
                        Outcome::Passed
                    } else {
                        Outcome::Failed("")
                    },
                );
                self.last_reported = Some(index);
            }
            Event::Done => self.done = true,
        }
        Ok(Line::Progress)
    }

    /// Prints (or, in terse mode, keeps) a line of the kernel's output.
    fn echo(&mut self, line: &str) {
        if self.opts.test.terse && self.test_mode {
            self.captured.push(line.to_owned());
        } else {
            self.print(&format!("{line}\n"));
        }
    }

    fn flush_captured(&mut self) {
        for line in std::mem::take(&mut self.captured) {
            self.print(&format!("{line}\n"));
        }
    }

    /// Reports the selected-but-ignored tests numbered below `index`.
    fn report_ignored_before(&mut self, index: usize) {
        while let Some(s) = self.selection.tests.get(self.ignored_cursor).copied() {
            if s.index >= index {
                break;
            }
            self.ignored_cursor += 1;
            if !s.run {
                self.report(s.index, Outcome::Ignored);
            }
        }
    }

    fn report(&mut self, index: usize, outcome: Outcome<'_>) {
        let test = &self.catalog.tests[index];
        let name = test.display_name();
        let reason = test.reason.clone();
        match outcome {
            Outcome::Passed => self.passed += 1,
            Outcome::Ignored => self.ignored += 1,
            Outcome::Failed(_) => self.failed.push(test.name().to_owned()),
        }
        let captured = std::mem::take(&mut self.captured);
        if self.opts.test.terse {
            let c = match outcome {
                Outcome::Passed => '.',
                Outcome::Ignored => 'i',
                Outcome::Failed(_) => 'F',
            };
            self.print(&format!("{c}"));
            self.terse_column += 1;
            if self.terse_column == 88 {
                self.print("\n");
                self.terse_column = 0;
            }
            if let Outcome::Failed(why) = outcome {
                let mut lines = captured;
                if !why.is_empty() {
                    lines.push(why.to_owned());
                }
                self.failure_output.push((name, lines));
            }
            return;
        }
        match outcome {
            Outcome::Passed => self.print(&format!("test {name} ... ok\n")),
            Outcome::Ignored => match reason {
                Some(r) => self.print(&format!("test {name} ... ignored, {r}\n")),
                None => self.print(&format!("test {name} ... ignored\n")),
            },
            Outcome::Failed("") => self.print(&format!("test {name} ... FAILED\n")),
            Outcome::Failed(why) => self.print(&format!("test {name} ... FAILED ({why})\n")),
        }
    }

    fn print(&mut self, text: &str) {
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }
}

/// What a serial line did.
enum Line {
    /// A marker: the kernel made progress (restarts the per-test timer).
    Progress,
    /// Plain output.
    Text,
}

/// How a test ended.
#[derive(Clone, Copy)]
enum Outcome<'w> {
    Passed,
    Ignored,
    /// Failed, with the runner's reason (empty when the kernel reported it).
    Failed(&'w str),
}

/// Whether a serial line is the bootloader's panic message (its fourth stage logs panics to the
/// serial port at the `Error` level the runner keeps).
pub fn is_bootloader_panic(line: &str) -> bool {
    line.starts_with("ERROR: panicked at") && line.contains("bootloader")
}

/// `16 MiB`, `20.5 MiB`.
pub fn mib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{:.2} MiB", bytes as f64 / f64::from(1 << 20))
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::record;
    use crate::options;

    fn catalog() -> Catalog {
        let mut s = record("k::first", "t.rs", 1, "", "");
        s.extend(record("k::slow", "t.rs", 2, "i", "too slow"));
        s.extend(record("k::faults", "t.rs", 3, "p", ""));
        s.extend(record("k::last", "t.rs", 4, "", ""));
        Catalog::parse(&s).unwrap()
    }

    fn opts(args: &[&str]) -> Options {
        options::parse(
            std::iter::once("k")
                .chain(args.iter().copied())
                .map(str::to_owned),
            |_| None,
        )
        .unwrap()
    }

    fn machine() -> Machine {
        Machine {
            qemu_args: vec![],
            ram: Some(16 << 20),
            min_ram: 21 << 20,
            read_screen: true,
        }
    }

    /// Feeds `lines` to a session as one boot's output and returns what it printed.
    fn feed(args: &[&str], lines: &[&str], end: Option<BootEnd>) -> (String, ExitCode) {
        let o = opts(args);
        let c = catalog();
        let mut out = Vec::new();
        let code = {
            let mut s = Session::new(&o, machine(), Some(&c), &mut out);
            for l in lines {
                s.handle_line(l).unwrap();
            }
            match end {
                Some(end) => s.finish_tests(end, Instant::now()),
                None => s.summary(Duration::ZERO),
            }
        };
        (String::from_utf8(out).unwrap(), code)
    }

    const ALL_PASS: [&str; 9] = [
        "@@ktest plan 4",
        "@@ktest start 0 first",
        "hello from first",
        "@@ktest ok 0",
        "@@ktest start 2 faults",
        "@@ktest ok 2",
        "@@ktest start 3 last",
        "@@ktest ok 3",
        "@@ktest done",
    ];

    #[test]
    fn heap_pictures_become_files_and_stay_out_of_the_output() {
        let dir = std::env::temp_dir().join(format!("session-pictures-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let o = opts(&[]);
        let mut out = Vec::new();
        {
            let mut s = Session::new(&o, machine(), None, &mut out).with_picture_dir(dir.clone());
            for l in [
                "booting",
                "@@kheap-picture begin at peak",
                "r ffffc00100000000 6 d 40 91",
                "c ffffc00100007000 c3 32 128 128",
                "m 4",
                "@@kheap-picture end",
                "@@kheap-picture begin cut short",
                "m 4",
                "PANIC: something",
            ] {
                s.handle_line(l).unwrap();
            }
        }
        let out = String::from_utf8(out).unwrap();
        let svg = dir.join(format!(
            "{}-1.svg",
            crate::catalog::plain_test_name(&o.kernel)
        ));
        assert_eq!(
            out,
            format!(
                "booting\nheap picture: {}\nwarning: heap picture `cut short` broke off\n\
                 PANIC: something\n",
                svg.display()
            )
        );
        assert!(std::fs::read_to_string(&svg).unwrap().contains("class-32"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reports_like_libtest() {
        let (out, code) = feed(&[], &ALL_PASS, None);
        assert_eq!(
            out,
            "hello from first\ntest first ... ok\ntest slow ... ignored, too slow\n\
             test faults - should panic ... ok\ntest last ... ok\n\ntest result: ok. 3 passed; \
             0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\n"
        );
        assert_eq!(code, ExitCode::SUCCESS);
    }

    #[test]
    fn terse_mode_prints_characters_and_failed_output_only() {
        let lines = [
            "@@ktest plan 4",
            "@@ktest start 0 first",
            "quiet please",
            "@@ktest ok 0",
            "@@ktest start 2 faults",
            "note: test did not panic as expected",
            "@@ktest fail 2",
            "@@ktest start 3 last",
            "@@ktest ok 3",
            "@@ktest done",
        ];
        let (out, code) = feed(&["-q"], &lines, None);
        assert_eq!(
            out,
            ".iF.\n\nfailures:\n\n---- faults - should panic output ----\n\
             note: test did not panic as expected\n\nfailures:\n    faults\n\n\
             test result: FAILED. 2 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; \
             finished in 0.00s\n\n"
        );
        assert_eq!(code, ExitCode::from(TEST_FAILURE_STATUS));
    }

    #[test]
    fn a_kernel_out_of_step_with_its_test_list_is_an_error() {
        let o = opts(&[]);
        let c = catalog();
        let mut s = Session::new(&o, machine(), Some(&c), Vec::new());
        assert!(s.handle_line("@@ktest plan 5").is_err());
        assert!(s.handle_line("@@ktest start 1 first").is_err());
        assert!(s.handle_line("@@ktest ok 3").is_err());
    }

    #[test]
    fn a_boot_failure_outside_tests_fails_the_run() {
        let end = BootEnd::BootloaderPanic {
            screen: Some("PANIC: protected_mode.rs".into()),
        };
        let (out, code) = feed(&[], &[], Some(end));
        assert!(
            out.contains("failures:\n    <kernel outside tests>"),
            "{out}"
        );
        assert_eq!(code, ExitCode::from(TEST_FAILURE_STATUS));
    }

    #[test]
    fn boot_failures_are_described_with_the_memory_needed() {
        let o = opts(&[]);
        let c = catalog();
        let s = Session::new(&o, machine(), Some(&c), Vec::new());
        let why = s.describe(&BootEnd::BootloaderPanic { screen: None });
        assert!(why.contains("the bootloader panicked before starting the kernel"));
        assert!(
            why.contains("QEMU had 16 MiB of RAM; this kernel needs about 21 MiB"),
            "{why}"
        );
        assert!(why.contains("KERNEL_QEMU_ARGS=\"-m 21M\""));
        let why = s.describe(&BootEnd::QemuFailed {
            status: Some(1),
            message: "qemu-system-x86_64: -bogus: invalid option".into(),
        });
        assert_eq!(
            why,
            "QEMU failed to start (exit status 1): qemu-system-x86_64: -bogus: invalid option"
        );
        let why = s.describe(&BootEnd::NoOutput {
            waited: Duration::from_secs(30),
            screen: None,
        });
        assert!(
            why.starts_with("no output from the kernel within 30s"),
            "{why}"
        );
        assert!(
            s.describe(&BootEnd::Exited(Some(0)))
                .contains("triple fault")
        );
    }

    #[test]
    fn recognises_bootloader_panics_on_serial() {
        assert!(is_bootloader_panic(
            "ERROR: panicked at /root/.cargo/registry/src/index/bootloader-x86_64-common-0.11.17/src/lib.rs:369:29:"
        ));
        assert!(!is_bootloader_panic(
            "KERNEL PANIC: panicked at kernel/src/main.rs"
        ));
        assert_eq!(mib(16 << 20), "16 MiB");
        assert_eq!(mib(21248 << 10), "20.75 MiB");
    }
}
