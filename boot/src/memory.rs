//! How much RAM QEMU is given, and how much a kernel needs to boot at all.
//!
//! The BIOS bootloader (0.11.17) copies the kernel file to physical address 16 MiB in its second
//! stage, which panics (on the VGA screen only) when RAM ends before the copy does. Its fourth
//! stage then maps the kernel's segments, a stack and all of physical memory: QEMU's memory map
//! reaches up to its reserved area just below 1 TiB, which takes about 4 MiB of page tables with
//! 2 MiB pages, and fails with `FrameAllocationFailed` without that room. Measured with QEMU 7.2:
//! the `cargo run` kernel (a 0.2 MiB stripped file, 0.5 MiB loaded) boots with `-m 21M` and not
//! with `-m 21248K`; the benchmark smoke test kernel (0.5 MiB file, 0.8 MiB loaded) boots with
//! `-m 22M` and not with `-m 21M`. [`minimum_bytes`] is the estimate these fix.

/// RAM QEMU gives a PC machine without `-m`.
pub const QEMU_DEFAULT_RAM: u64 = 128 << 20;
/// Where the bootloader's second stage copies the kernel file.
const KERNEL_LOAD_ADDRESS: u64 = 16 << 20;
/// The bootloader's own needs beyond the kernel: page tables for the physical-memory map (4 MiB
/// up to QEMU's reserved area below 1 TiB), the 256 KiB kernel stack of `BOOTLOADER_CONFIG`, boot
/// information. Fitted to the measurements above.
const BOOTLOADER_OVERHEAD: u64 = 4 * (1 << 20) + (1 << 18);

/// The RAM size the QEMU arguments ask for (the last `-m` wins, as in QEMU), in bytes.
pub fn ram_bytes(qemu_args: &[String]) -> Result<u64, String> {
    let mut ram = QEMU_DEFAULT_RAM;
    let mut args = qemu_args.iter();
    while let Some(arg) = args.next() {
        if arg == "-m" || arg == "--m" {
            let value = args.next().ok_or("`-m` without a size")?;
            ram = parse_size(value)?;
        }
    }
    Ok(ram)
}

/// A `-m` value: `64`, `64M`, `2G`, `20992K`, `size=64M,slots=2`... (a number without a suffix is
/// in MiB, as in QEMU).
fn parse_size(value: &str) -> Result<u64, String> {
    let size = value
        .split(',')
        .find_map(|part| match part.split_once('=') {
            Some(("size", v)) => Some(v),
            Some(_) => None,
            None => Some(part),
        })
        .unwrap_or(value);
    let bad = || format!("cannot read the RAM size in `-m {value}`");
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let shift = match &size[digits.len()..] {
        "" | "M" | "m" => 20,
        "K" | "k" => 10,
        "G" | "g" => 30,
        "T" | "t" => 40,
        "B" | "b" => 0,
        _ => return Err(bad()),
    };
    let n: f64 = digits.parse().map_err(|_| bad())?;
    if !(n.is_finite() && n >= 0.0) {
        return Err(bad());
    }
    Ok((n * (1u64 << shift) as f64) as u64)
}

/// Estimated smallest RAM with which the BIOS bootloader starts a kernel whose file (as put in the
/// disk image) has `file_bytes` and whose segments take `loaded_bytes`.
pub fn minimum_bytes(file_bytes: u64, loaded_bytes: u64) -> u64 {
    KERNEL_LOAD_ADDRESS + file_bytes.div_ceil(4096) * 4096 + loaded_bytes + BOOTLOADER_OVERHEAD
}

/// Whole MiB, rounded up.
pub fn mib_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn reads_qemu_ram_sizes() {
        assert_eq!(ram_bytes(&[]), Ok(128 << 20));
        assert_eq!(ram_bytes(&args("-m 16M")), Ok(16 << 20));
        assert_eq!(ram_bytes(&args("-m 32")), Ok(32 << 20));
        assert_eq!(ram_bytes(&args("-m 2G -smp 2")), Ok(2 << 30));
        assert_eq!(ram_bytes(&args("-m 20992K")), Ok(20992 << 10));
        assert_eq!(
            ram_bytes(&args("-m 128M -m size=24M,slots=1")),
            Ok(24 << 20)
        );
        assert_eq!(ram_bytes(&args("-m 1.5G")), Ok(3 << 29));
        assert!(ram_bytes(&args("-m lots")).is_err());
        assert!(ram_bytes(&args("-m")).is_err());
    }

    #[test]
    fn minimum_matches_the_measured_kernels() {
        // The `cargo run` kernel: boots at 21 MiB, not at 20.75 MiB.
        let main = minimum_bytes(215_416, 0x8_2000);
        assert!(main <= 21 << 20 && main > 21248 << 10, "{main}");
        assert_eq!(mib_ceil(main), 21);
        // The benchmark smoke test kernel: boots at 22 MiB, not at 21 MiB.
        let bench = minimum_bytes(488_464, 0xB_C000);
        assert!(bench <= 22 << 20 && bench > 21 << 20, "{bench}");
        assert_eq!(mib_ceil(bench), 22);
    }
}
