//! The runner binary: see the library's documentation (`boot/src/lib.rs`) for what it does. This
//! file wires the library to the process (arguments, environment, exit status) and builds the disk
//! image, the one part that needs the `bootloader` crate.

use std::env;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use boot::catalog::{self, Catalog};
use boot::options::{self, OptionError, Options};
use boot::paths::{self, TempFile};
use boot::session::{Machine, Session};
use boot::{elf, memory, qemu};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let opts = match options::parse(env::args().skip(1), |name| env::var(name).ok()) {
        Ok(opts) => opts,
        Err(OptionError::Help) => {
            println!("{}", options::USAGE);
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.to_string()),
    };
    for name in options::unknown_variables(env::vars_os().filter_map(|(k, _)| k.into_string().ok()))
    {
        eprintln!(
            "warning: the runner does not know the variable {name} (it reads {})",
            options::VARIABLES.join(", ")
        );
    }
    let path = &opts.kernel;
    let elf_bytes =
        fs::read(path).map_err(|e| format!("cannot read kernel {}: {e}", path.display()))?;
    let info = elf::check_kernel(&elf_bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let catalog = elf::section(&elf_bytes, catalog::SECTION)
        .ok()
        .flatten()
        .map(Catalog::parse)
        .transpose()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // A kernel without `#[kernel::test]`s that gets test arguments (an example kernel that
    // `cargo test` boots, and which reports by its exit status) is one test named after its
    // binary: filters and `--skip` select it, `--list` lists it; selected, it boots as it is.
    let single = (catalog.is_none() && !opts.test.is_empty())
        .then(|| Catalog::single(catalog::plain_test_name(path)));
    let listed = catalog.as_ref().or(single.as_ref());
    if let Some(catalog) = listed {
        let selection = catalog.select(&opts.test);
        if opts.test.list {
            print!("{}", catalog.list(&selection, opts.test.terse));
            return Ok(ExitCode::SUCCESS);
        }
        if !selection.runs_any() {
            // Nothing to boot for: report the ignored and filtered-out tests as libtest would.
            let machine = Machine {
                qemu_args: Vec::new(),
                ram: None,
                min_ram: 0,
                read_screen: false,
            };
            return Session::new(&opts, machine, Some(catalog), io::stdout().lock()).run();
        }
    }
    let baked_args: Vec<String> = elf::section(&elf_bytes, ".kernel_qemu_args")
        .ok()
        .flatten()
        .map(|b| {
            String::from_utf8_lossy(b)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    check_qemu()?;
    let ovmf = if opts.uefi { Some(find_ovmf()?) } else { None };
    let (image, booted_bytes) = build_image(&opts)?;

    let mut qemu_args = vec![
        "-drive".to_owned(),
        format!("format=raw,file={}", image.path().display()),
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
    if let Some(picture) = opts.heap_picture {
        qemu_args.push("-fw_cfg".into());
        qemu_args.push(format!(
            "name=opt/kheap/picture,string={}",
            u8::from(picture)
        ));
    }
    qemu_args.extend(baked_args);
    qemu_args.extend(opts.extra_qemu_args.iter().cloned());
    if opts.gdb {
        qemu_args.extend(["-s".into(), "-S".into()]);
        eprintln!(
            "QEMU is waiting for GDB on localhost:1234. In another terminal:\n  gdb -ex \
             'symbol-file -o 0xffff800000000000 {}' -ex 'target remote :1234' -ex 'hbreak \
             kernel_main' -ex continue",
            path.display()
        );
    }
    let machine = Machine {
        ram: memory::ram_bytes(&qemu_args).ok(),
        min_ram: memory::minimum_bytes(booted_bytes, info.loaded_bytes),
        read_screen: !opts.uefi,
        qemu_args,
    };
    let result = Session::new(&opts, machine, catalog.as_ref(), io::stdout().lock()).run();
    if opts.keep_image {
        eprintln!("disk image kept at {}", image.path().display());
    }
    result
}

/// Fails with the command that fixes it when QEMU is missing.
fn check_qemu() -> Result<(), String> {
    match Command::new(qemu::QEMU).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(format!(
            "{} not found; install it with `boot/setup.sh` (or `sudo apt-get install -y \
             qemu-system-x86`)",
            qemu::QEMU
        )),
    }
}

fn find_ovmf() -> Result<PathBuf, String> {
    if let Some(p) = env::var_os("OVMF_PATH") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("OVMF_PATH={}: no such file", p.display()))
        };
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

/// Makes the disk image (under `target/boot-images/`) from a stripped copy of the kernel: the
/// bootloader loads a few-MB debug ELF noticeably slower, and GDB reads symbols from the original
/// ELF on the host anyway. Returns the image and the size of the kernel file in it.
fn build_image(opts: &Options) -> Result<(TempFile, u64), String> {
    let kernel = &opts.kernel;
    let dir = paths::image_dir();
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    paths::remove_stale(&dir);
    let stem = kernel
        .file_name()
        .map_or_else(|| "kernel".into(), |n| n.to_string_lossy().into_owned());
    // Kept images have a stable name; others one per process, so parallel runs do not collide.
    let unique = if opts.keep_image {
        stem.clone()
    } else {
        format!("{stem}-{}", std::process::id())
    };
    let kind = if opts.uefi { "uefi" } else { "bios" };
    let image = TempFile::new(dir.join(format!("{unique}.{kind}.img")), opts.keep_image);
    let stripped = TempFile::new(dir.join(format!("{unique}.stripped")), false);
    let to_boot = if llvm_strip(kernel, stripped.path()) {
        stripped.path()
    } else {
        kernel.as_path()
    };
    let booted_bytes = fs::metadata(to_boot).map(|m| m.len()).unwrap_or(0);
    let mut config = bootloader::BootConfig::default();
    // The kernel's serial output is the runner's output: keep the bootloader's own log lines out
    // of it, except errors, so that a bootloader panic (in its fourth stage) shows on serial.
    config.serial_logging = true;
    config.log_level = bootloader_boot_config::LevelFilter::Error;
    config.frame_buffer_logging = false;
    let made = if opts.uefi {
        bootloader::UefiBoot::new(to_boot)
            .set_boot_config(&config)
            .create_disk_image(image.path())
    } else {
        bootloader::BiosBoot::new(to_boot)
            .set_boot_config(&config)
            .create_disk_image(image.path())
    };
    made.map_err(|e| format!("cannot build disk image {}: {e:#}", image.path().display()))?;
    Ok((image, booted_bytes))
}

/// Strips `input` into `output` with the toolchain's `llvm-strip`; false if that is not possible.
fn llvm_strip(input: &Path, output: &Path) -> bool {
    let Ok(sysroot) = Command::new("rustc").args(["--print", "sysroot"]).output() else {
        return false;
    };
    let Ok(sysroot) = String::from_utf8(sysroot.stdout) else {
        return false;
    };
    let tool = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(env!("BOOT_HOST_TRIPLE"))
        .join("bin/llvm-strip");
    Command::new(tool)
        .arg("--strip-all")
        .arg(input)
        .arg("-o")
        .arg(output)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
