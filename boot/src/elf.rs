//! Just enough ELF64 reading to tell whether a file is a kernel for this runner, and to read a named
//! section (the test list, the kernel's QEMU arguments).
//!
//! A kernel here is a 64-bit little-endian x86_64 executable (`ET_EXEC`, or `ET_DYN` for the
//! position-independent kernels `x86_64-unknown-none` builds) with no program interpreter (a host
//! program asks for `ld-linux`), and with the `.bootloader-config` section that
//! `bootloader_api::entry_point!` writes and the bootloader reads. Anything else gets an error
//! saying what the file is instead of a boot that hangs.

use std::fmt;

/// Why a file cannot be booted as a kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfError {
    /// The file does not start with the ELF magic bytes.
    NotElf,
    /// A 32-bit ELF file.
    Not64Bit,
    /// A big-endian ELF file.
    BigEndian,
    /// Built for another machine (the ELF `e_machine` number).
    WrongMachine(u16),
    /// Not an executable: a relocatable object, a core dump... (the ELF `e_type`).
    NotExecutable(u16),
    /// A program for the host: it names a program interpreter (the dynamic loader).
    HostProgram(String),
    /// An x86_64 executable without `.bootloader-config`: not made with `bootloader_api`.
    NoBootloaderConfig,
    /// A header points outside the file.
    Truncated,
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const KERNEL: &str = "expected an x86_64-unknown-none kernel built by cargo";
        match self {
            Self::NotElf => write!(f, "not an ELF file ({KERNEL})"),
            Self::Not64Bit => write!(f, "a 32-bit ELF file ({KERNEL})"),
            Self::BigEndian => write!(f, "a big-endian ELF file ({KERNEL})"),
            Self::WrongMachine(m) => write!(
                f,
                "an ELF file for another machine (e_machine {m}, not x86_64 = 62; {KERNEL})"
            ),
            Self::NotExecutable(t) => write!(
                f,
                "an ELF file that is not an executable (e_type {t}: an object file or core dump?; \
                 {KERNEL})"
            ),
            Self::HostProgram(interp) => write!(
                f,
                "a program for the host, not a kernel: it asks for the dynamic loader {interp} \
                 ({KERNEL})"
            ),
            Self::NoBootloaderConfig => write!(
                f,
                "not a kernel for this bootloader: no `.bootloader-config` section (a kernel gets \
                 one from `bootloader_api::entry_point!`, as `kernel::test_kernel!` and \
                 kernel/src/main.rs use it)"
            ),
            Self::Truncated => f.write_str("truncated or corrupt ELF file"),
        }
    }
}

const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;
const SHT_NOBITS: u32 = 8;

/// What the runner needs to know of a kernel ELF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInfo {
    /// Bytes of memory its loadable segments take (`p_memsz`, each rounded up to whole pages).
    pub loaded_bytes: u64,
}

/// A little-endian reader over the file, every access bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&self, off: u64, len: u64) -> Result<&'a [u8], ElfError> {
        let start = usize::try_from(off).map_err(|_| ElfError::Truncated)?;
        let len = usize::try_from(len).map_err(|_| ElfError::Truncated)?;
        let end = start.checked_add(len).ok_or(ElfError::Truncated)?;
        self.0.get(start..end).ok_or(ElfError::Truncated)
    }
    /// Everything from `off` to the end of the file.
    fn tail(&self, off: u64) -> Result<&'a [u8], ElfError> {
        let start = usize::try_from(off).map_err(|_| ElfError::Truncated)?;
        self.0.get(start..).ok_or(ElfError::Truncated)
    }
    fn u16(&self, off: u64) -> Result<u16, ElfError> {
        let b = self.bytes(off, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&self, off: u64) -> Result<u32, ElfError> {
        let b = self.bytes(off, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&self, off: u64) -> Result<u64, ElfError> {
        let b = self.bytes(off, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// Offset of entry `i` of a table at `base` with entries of `size` bytes.
    fn entry(base: u64, i: u64, size: u64) -> Result<u64, ElfError> {
        i.checked_mul(size)
            .and_then(|o| o.checked_add(base))
            .ok_or(ElfError::Truncated)
    }
}

/// Checks the ELF header: 64-bit, little-endian, x86_64, executable.
fn check_header(elf: &[u8]) -> Result<Reader<'_>, ElfError> {
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(ElfError::NotElf);
    }
    match elf.get(4) {
        Some(2) => {}
        Some(1) => return Err(ElfError::Not64Bit),
        _ => return Err(ElfError::Truncated),
    }
    match elf.get(5) {
        Some(1) => {}
        Some(2) => return Err(ElfError::BigEndian),
        _ => return Err(ElfError::Truncated),
    }
    let r = Reader(elf);
    let machine = r.u16(18)?;
    if machine != EM_X86_64 {
        return Err(ElfError::WrongMachine(machine));
    }
    let kind = r.u16(16)?;
    if kind != ET_EXEC && kind != ET_DYN {
        return Err(ElfError::NotExecutable(kind));
    }
    Ok(r)
}

/// Checks that `elf` is a kernel this runner can boot (see the module documentation).
pub fn check_kernel(elf: &[u8]) -> Result<KernelInfo, ElfError> {
    let r = check_header(elf)?;
    let phoff = r.u64(0x20)?;
    let phentsize = u64::from(r.u16(0x36)?);
    let phnum = u64::from(r.u16(0x38)?);
    let mut loaded_bytes = 0u64;
    for i in 0..phnum {
        let ph = Reader::entry(phoff, i, phentsize)?;
        match r.u32(ph)? {
            PT_INTERP => {
                let interp =
                    r.bytes(r.u64(ph.saturating_add(8))?, r.u64(ph.saturating_add(32))?)?;
                let interp = String::from_utf8_lossy(interp);
                return Err(ElfError::HostProgram(
                    interp.trim_end_matches('\0').to_owned(),
                ));
            }
            PT_LOAD => {
                let memsz = r.u64(ph.saturating_add(40))?;
                loaded_bytes =
                    loaded_bytes.saturating_add(memsz.div_ceil(4096).saturating_mul(4096));
            }
            _ => {}
        }
    }
    if find_section(&r, ".bootloader-config")?.is_none() {
        return Err(ElfError::NoBootloaderConfig);
    }
    Ok(KernelInfo { loaded_bytes })
}

/// The contents of the section called `name` if the file is an x86_64 ELF with one (`None` for a
/// section without file contents, like `.bss`).
pub fn section<'a>(elf: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ElfError> {
    let r = check_header(elf)?;
    find_section(&r, name)
}

fn find_section<'a>(r: &Reader<'a>, name: &str) -> Result<Option<&'a [u8]>, ElfError> {
    let shoff = r.u64(0x28)?;
    let shentsize = u64::from(r.u16(0x3A)?);
    let shnum = u64::from(r.u16(0x3C)?);
    let shstrndx = u64::from(r.u16(0x3E)?);
    if shnum == 0 {
        return Ok(None);
    }
    let strtab = r.u64(Reader::entry(shoff, shstrndx, shentsize)?.saturating_add(0x18))?;
    for i in 0..shnum {
        let sh = Reader::entry(shoff, i, shentsize)?;
        let name_off = strtab
            .checked_add(u64::from(r.u32(sh)?))
            .ok_or(ElfError::Truncated)?;
        let rest = r.tail(name_off)?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(ElfError::Truncated)?;
        if &rest[..end] == name.as_bytes() {
            if r.u32(sh.saturating_add(4))? == SHT_NOBITS {
                return Ok(None);
            }
            return r
                .bytes(
                    r.u64(sh.saturating_add(0x18))?,
                    r.u64(sh.saturating_add(0x20))?,
                )
                .map(Some);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testelf::elf;

    const CONFIG: (&str, &[u8]) = (".bootloader-config", b"config");

    #[test]
    fn accepts_a_kernel_and_reads_its_sections() {
        let file = elf(
            62,
            &[(PT_LOAD, b"code", 5000), (PT_LOAD, b"", 10)],
            &[CONFIG, (".ktest_list", b"records")],
        );
        let info = check_kernel(&file).unwrap();
        assert_eq!(info.loaded_bytes, 3 * 4096);
        assert_eq!(section(&file, ".ktest_list"), Ok(Some(&b"records"[..])));
        assert_eq!(section(&file, ".none"), Ok(None));
    }

    #[test]
    fn rejects_what_is_not_a_kernel() {
        assert_eq!(check_kernel(b"#!/bin/sh\necho hi\n"), Err(ElfError::NotElf));
        assert_eq!(check_kernel(b""), Err(ElfError::NotElf));
        let mut elf32 = elf(62, &[], &[CONFIG]);
        elf32[4] = 1;
        assert_eq!(check_kernel(&elf32), Err(ElfError::Not64Bit));
        let mut big = elf(62, &[], &[CONFIG]);
        big[5] = 2;
        assert_eq!(check_kernel(&big), Err(ElfError::BigEndian));
        assert_eq!(
            check_kernel(&elf(183, &[], &[CONFIG])),
            Err(ElfError::WrongMachine(183))
        );
        let mut object = elf(62, &[], &[CONFIG]);
        object[16] = 1;
        assert_eq!(check_kernel(&object), Err(ElfError::NotExecutable(1)));
        assert_eq!(
            check_kernel(&elf(62, &[], &[])),
            Err(ElfError::NoBootloaderConfig)
        );
        let host = elf(
            62,
            &[(PT_INTERP, b"/lib64/ld-linux-x86-64.so.2\0", 28)],
            &[CONFIG],
        );
        assert_eq!(
            check_kernel(&host),
            Err(ElfError::HostProgram("/lib64/ld-linux-x86-64.so.2".into()))
        );
    }

    #[test]
    fn rejects_the_runner_itself_as_a_host_program() {
        // The test binary is a host x86_64 program, much like `/bin/true`.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let err = check_kernel(&me).unwrap_err();
        assert!(
            matches!(err, ElfError::HostProgram(_) | ElfError::NoBootloaderConfig),
            "{err:?}"
        );
        assert!(
            section(&me, ".text")
                .unwrap()
                .is_some_and(|s| !s.is_empty())
        );
    }

    #[test]
    fn truncated_files_are_errors_not_panics() {
        let file = elf(62, &[(PT_LOAD, b"code", 4)], &[CONFIG]);
        for len in 0..file.len() {
            let _ = check_kernel(&file[..len]);
            let _ = section(&file[..len], ".bootloader-config");
        }
        let mut bad = file.clone();
        bad[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(check_kernel(&bad), Err(ElfError::Truncated));
    }
}
