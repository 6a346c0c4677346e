//! The host-side runner: `cargo run` and `cargo test` hand it a kernel ELF (see `.cargo/config.toml`).
//!
//! It wraps the ELF in a bootable disk image with the `bootloader` crate, boots it in QEMU with the
//! serial port on the terminal, and turns QEMU's end into a process status. For test kernels it
//! also speaks the `@@ktest` protocol of `kernel/src/testing.rs`: it prints cargo-style results,
//! reboots the kernel past a failed test (passing the next index through fw_cfg), kills a test that
//! hangs, and prints `test result: ...` at the end.
//!
//! Options come from the environment (see `README.md`): `KERNEL_QEMU_ARGS`, `KERNEL_BOOT`,
//! `KERNEL_KEEP_IMAGE`, `KERNEL_GDB`, `KERNEL_TIMEOUT`, `KTEST_TIMEOUT`.

mod elf;
mod protocol;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use protocol::{Event, parse_line};

/// QEMU's status when the kernel wrote `QemuExitCode::Success` (0x10) to the debug-exit port.
const QEMU_SUCCESS: i32 = (0x10 << 1) | 1;
/// ... `QemuExitCode::Failed` (0x11).
const QEMU_FAILED: i32 = (0x11 << 1) | 1;
/// ... `QemuExitCode::Resume` (0x12): a test kernel reported one outcome and wants a reboot.
const QEMU_RESUME: i32 = (0x12 << 1) | 1;

/// Status cargo's own test harness uses for failed tests.
const TEST_FAILURE_STATUS: u8 = 101;

/// Default limit for a whole `cargo run` boot, in seconds (QEMU runs without KVM here: slow).
const DEFAULT_RUN_TIMEOUT_SECS: u64 = 900;
/// Default limit for one kernel test, in seconds.
const DEFAULT_TEST_TIMEOUT_SECS: u64 = 180;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Everything the runner was told, from its arguments and the environment.
struct Options {
    kernel: PathBuf,
    filters: Vec<String>,
    exact: bool,
    extra_qemu_args: Vec<String>,
    uefi: bool,
    keep_image: bool,
    gdb: bool,
    run_timeout: Duration,
    test_timeout: Duration,
}

fn options() -> Result<Options, String> {
    let mut args = env::args().skip(1);
    let kernel = args
        .next()
        .map(PathBuf::from)
        .ok_or("usage: boot <kernel-elf> [test filters...] (normally run by cargo)")?;
    let mut filters = Vec::new();
    let mut exact = false;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--exact" => exact = true,
            // Options of cargo's test harness that have no meaning here, some with a value.
            "--test-threads" | "--color" | "--format" | "--skip" | "-Z" => {
                args.next();
            }
            a if a.starts_with('-') => {}
            a => filters.push(a.to_owned()),
        }
    }
    let secs = |name: &str, default: u64| -> Result<Duration, String> {
        match env::var(name) {
            Ok(v) => v
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| format!("{name}={v:?} is not a number of seconds")),
            Err(_) => Ok(Duration::from_secs(default)),
        }
    };
    let boot = env::var("KERNEL_BOOT").unwrap_or_else(|_| "bios".into());
    let uefi = match boot.as_str() {
        "bios" => false,
        "uefi" => true,
        other => return Err(format!("KERNEL_BOOT={other:?}: expected `bios` or `uefi`")),
    };
    let flag = |name: &str| env::var(name).is_ok_and(|v| !v.is_empty() && v != "0");
    Ok(Options {
        kernel,
        filters,
        exact,
        extra_qemu_args: env::var("KERNEL_QEMU_ARGS")
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        uefi,
        keep_image: flag("KERNEL_KEEP_IMAGE"),
        gdb: flag("KERNEL_GDB"),
        run_timeout: secs("KERNEL_TIMEOUT", DEFAULT_RUN_TIMEOUT_SECS)?,
        test_timeout: secs("KTEST_TIMEOUT", DEFAULT_TEST_TIMEOUT_SECS)?,
    })
}

fn run() -> Result<ExitCode, String> {
    let opts = options()?;
    let elf_bytes = fs::read(&opts.kernel)
        .map_err(|e| format!("cannot read kernel {}: {e}", opts.kernel.display()))?;
    elf::check_kernel(&elf_bytes).map_err(|e| format!("{}: {e}", opts.kernel.display()))?;
    let baked_args: Vec<String> = elf::section(&elf_bytes, ".kernel_qemu_args")
        .map(|b| {
            String::from_utf8_lossy(b)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    check_qemu()?;
    let ovmf = if opts.uefi { Some(find_ovmf()?) } else { None };

    let image = build_image(&opts)?;
    let mut qemu_args = vec![
        "-drive".to_owned(),
        format!("format=raw,file={}", image.display()),
        "-serial".into(),
        "stdio".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-device".into(),
        "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
    ];
    if let Some(ovmf) = &ovmf {
        qemu_args.push("-bios".into());
        qemu_args.push(ovmf.display().to_string());
    }
    qemu_args.extend(baked_args);
    qemu_args.extend(opts.extra_qemu_args.iter().cloned());
    if opts.gdb {
        qemu_args.extend(["-s".into(), "-S".into()]);
        eprintln!(
            "QEMU is waiting for GDB on localhost:1234. In another terminal:\n  gdb -ex 'symbol-file -o 0xffff800000000000 {}' -ex 'target remote :1234' -ex 'hbreak kernel_main' -ex continue",
            opts.kernel.display()
        );
    }

    let session = Session::new(&opts, qemu_args);
    let result = session.run();
    if opts.keep_image {
        eprintln!("disk image kept at {}", image.display());
    } else {
        let _ = fs::remove_file(&image);
    }
    result
}

/// Fails with the command that fixes it when QEMU is missing.
fn check_qemu() -> Result<(), String> {
    match Command::new("qemu-system-x86_64").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(
            "qemu-system-x86_64 not found; install it with `./setup.sh` \
                  (or `sudo apt-get install -y qemu-system-x86`)"
                .into(),
        ),
    }
}

fn find_ovmf() -> Result<PathBuf, String> {
    if let Ok(p) = env::var("OVMF_PATH") {
        return Ok(PathBuf::from(p));
    }
    [
        "/usr/share/ovmf/OVMF.fd",
        "/usr/share/OVMF/OVMF.fd",
        "/usr/share/qemu/OVMF.fd",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .ok_or_else(|| {
        "KERNEL_BOOT=uefi needs OVMF firmware; install it with `sudo apt-get install -y ovmf` \
         or point OVMF_PATH at an OVMF.fd"
            .into()
    })
}

/// Makes the disk image from a stripped copy of the kernel (the bootloader loads a few-MB debug
/// ELF noticeably slower; GDB reads symbols from the original ELF on the host anyway).
fn build_image(opts: &Options) -> Result<PathBuf, String> {
    let kernel = &opts.kernel;
    let stripped = kernel.with_extension("stripped");
    let to_boot = match llvm_strip(kernel, &stripped) {
        Ok(()) => stripped.clone(),
        Err(_) => kernel.clone(),
    };
    let image = kernel.with_extension(if opts.uefi { "uefi.img" } else { "bios.img" });
    let mut config = bootloader::BootConfig::default();
    config.serial_logging = false;
    config.frame_buffer_logging = false;
    let made = if opts.uefi {
        bootloader::UefiBoot::new(&to_boot)
            .set_boot_config(&config)
            .create_disk_image(&image)
    } else {
        bootloader::BiosBoot::new(&to_boot)
            .set_boot_config(&config)
            .create_disk_image(&image)
    };
    if to_boot == stripped {
        let _ = fs::remove_file(&stripped);
    }
    made.map_err(|e| format!("cannot build disk image {}: {e:#}", image.display()))?;
    Ok(image)
}

fn llvm_strip(input: &Path, output: &Path) -> Result<(), ()> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(drop)?;
    let sysroot = String::from_utf8(sysroot.stdout).map_err(drop)?;
    let tool = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(env!("BOOT_HOST_TRIPLE"))
        .join("bin/llvm-strip");
    let status = Command::new(tool)
        .arg("--strip-all")
        .arg(input)
        .arg("-o")
        .arg(output)
        .status()
        .map_err(drop)?;
    if status.success() { Ok(()) } else { Err(()) }
}

/// What one QEMU boot ended with.
enum BootEnd {
    /// QEMU exited with this status (`None` if killed by a signal).
    Exited(Option<i32>),
    /// The time limit ran out and QEMU was killed.
    TimedOut(Duration),
}

/// One `cargo run` or `cargo test` of a kernel: possibly several QEMU boots.
struct Session<'o> {
    opts: &'o Options,
    qemu_args: Vec<String>,
    test_mode: bool,
    names: Vec<(usize, String)>,
    current: Option<(usize, String)>,
    passed: usize,
    failed: Vec<String>,
    filtered_out: usize,
    done: bool,
}

impl<'o> Session<'o> {
    fn new(opts: &'o Options, qemu_args: Vec<String>) -> Self {
        Self {
            opts,
            qemu_args,
            test_mode: false,
            names: Vec::new(),
            current: None,
            passed: 0,
            failed: Vec::new(),
            filtered_out: 0,
            done: false,
        }
    }

    fn run(mut self) -> Result<ExitCode, String> {
        let started = Instant::now();
        let mut start = 0usize;
        loop {
            let end = self.boot(start)?;
            if !self.test_mode {
                return Ok(self.finish_run(end));
            }
            let resume_after = match end {
                BootEnd::Exited(Some(QEMU_SUCCESS)) if self.done => break,
                BootEnd::Exited(Some(QEMU_RESUME)) => self.last_reported(),
                BootEnd::Exited(status) => {
                    let why = match status {
                        Some(QEMU_SUCCESS) => "kernel exited before finishing its tests".to_owned(),
                        Some(QEMU_FAILED) => "kernel panicked outside a test".to_owned(),
                        Some(s) => format!(
                            "QEMU exited with status {s} without the debug-exit device \
                             (triple fault or reset?)"
                        ),
                        None => "QEMU was killed by a signal".to_owned(),
                    };
                    self.fail_current(&why)
                }
                BootEnd::TimedOut(limit) => {
                    self.fail_current(&format!("timed out after {}s", limit.as_secs()))
                }
            };
            match resume_after {
                Some(index) if index >= start => start = index + 1,
                _ => {
                    // No test was running: the kernel failed before or between tests.
                    eprintln!("error: test kernel failed outside any test");
                    self.failed.push("<kernel outside tests>".into());
                    break;
                }
            }
        }
        Ok(self.summary(started.elapsed()))
    }

    /// Index of the test whose outcome was reported last in this boot.
    fn last_reported(&self) -> Option<usize> {
        self.names.last().map(|(i, _)| *i)
    }

    /// Marks the running test failed for `why`; returns its index so the next boot skips it.
    fn fail_current(&mut self, why: &str) -> Option<usize> {
        let (index, name) = self.current.take()?;
        println!("test {name} ... FAILED ({why})");
        self.failed.push(name.clone());
        self.names.push((index, name));
        Some(index)
    }

    fn finish_run(&self, end: BootEnd) -> ExitCode {
        match end {
            BootEnd::Exited(Some(QEMU_SUCCESS)) => ExitCode::SUCCESS,
            BootEnd::Exited(Some(QEMU_FAILED)) => {
                eprintln!("error: the kernel reported failure");
                ExitCode::FAILURE
            }
            BootEnd::Exited(Some(status)) => {
                eprintln!(
                    "error: QEMU exited with status {status} without the kernel reporting \
                     (triple fault or reset?)"
                );
                ExitCode::FAILURE
            }
            BootEnd::Exited(None) => {
                eprintln!("error: QEMU was killed by a signal");
                ExitCode::FAILURE
            }
            BootEnd::TimedOut(limit) => {
                eprintln!("error: the kernel timed out after {}s", limit.as_secs());
                ExitCode::FAILURE
            }
        }
    }

    fn summary(&self, elapsed: Duration) -> ExitCode {
        if !self.failed.is_empty() {
            println!("\nfailures:");
            for name in &self.failed {
                println!("    {name}");
            }
        }
        let verdict = if self.failed.is_empty() {
            "ok"
        } else {
            "FAILED"
        };
        println!(
            "\ntest result: {verdict}. {} passed; {} failed; 0 ignored; 0 measured; {} filtered out; \
             finished in {:.2}s\n",
            self.passed,
            self.failed.len(),
            self.filtered_out,
            elapsed.as_secs_f64()
        );
        if self.failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(TEST_FAILURE_STATUS)
        }
    }

    /// Boots the kernel once, starting at test `start`, and echoes its serial output.
    fn boot(&mut self, start: usize) -> Result<BootEnd, String> {
        let mut args = self.qemu_args.clone();
        let mut fw_cfg = |name: &str, value: &str| {
            args.push("-fw_cfg".into());
            args.push(format!("name=opt/ktest/{name},string={value}"));
        };
        if start > 0 {
            fw_cfg("start", &start.to_string());
        }
        let filter = self.opts.filters.join(" ");
        if !filter.is_empty() {
            fw_cfg("filter", &filter.replace(',', ",,"));
        }
        if self.opts.exact {
            fw_cfg("exact", "1");
        }
        let mut child = Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
        let lines = spawn_line_reader(&mut child);
        let mut last_progress = Instant::now();
        loop {
            let limit = if self.test_mode {
                self.opts.test_timeout
            } else {
                self.opts.run_timeout
            };
            let waited = last_progress.elapsed();
            if !self.opts.gdb && waited >= limit {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(BootEnd::TimedOut(limit));
            }
            let wait = if self.opts.gdb {
                Duration::from_secs(3600)
            } else {
                limit - waited
            };
            match lines.recv_timeout(wait.min(Duration::from_millis(500))) {
                Ok(line) => {
                    if self.handle_line(&line) {
                        last_progress = Instant::now();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = child.wait().map_err(|e| format!("waiting for QEMU: {e}"))?;
                    return Ok(BootEnd::Exited(status.code()));
                }
            }
        }
    }

    /// Handles one line of serial output; returns true if it started a new test (which restarts
    /// the per-test timer).
    fn handle_line(&mut self, line: &str) -> bool {
        let (text, event) = parse_line(line);
        if !text.is_empty() || event.is_none() {
            println!("{text}");
            let _ = std::io::stdout().flush();
        }
        let Some(event) = event else { return false };
        match event {
            Event::Plan {
                tests,
                filtered_out,
            } => {
                self.test_mode = true;
                self.filtered_out = filtered_out;
                println!("\nrunning {tests} tests");
            }
            Event::Start { index, name } => {
                self.test_mode = true;
                self.current = Some((index, name));
                return true;
            }
            Event::Ok { index } | Event::Fail { index } => {
                let ok = matches!(event, Event::Ok { .. });
                let name = match self.current.take() {
                    Some((i, name)) if i == index => name,
                    _ => format!("#{index}"),
                };
                if ok {
                    println!("test {name} ... ok");
                    self.passed += 1;
                } else {
                    println!("test {name} ... FAILED");
                    self.failed.push(name.clone());
                }
                self.names.push((index, name));
            }
            Event::Done => self.done = true,
        }
        true
    }
}

/// Reads QEMU's stdout on a thread and sends it line by line; the channel closes at EOF.
fn spawn_line_reader(child: &mut Child) -> Receiver<String> {
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut pending = Vec::new();
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=pos).collect();
                        let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                        if tx.send(text.trim_end_matches('\r').to_owned()).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if !pending.is_empty() {
            let _ = tx.send(String::from_utf8_lossy(&pending).into_owned());
        }
    });
    rx
}
