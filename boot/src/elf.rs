//! Just enough ELF64 reading to validate a kernel file and read one named section.

/// Why a file cannot be booted as a kernel.
#[derive(Debug, PartialEq, Eq)]
pub enum ElfError {
    /// The file does not start with the ELF magic bytes.
    NotElf,
    /// It is ELF, but not a 64-bit little-endian x86_64 executable.
    WrongKind(&'static str),
    /// A header points outside the file.
    Truncated,
}

impl std::fmt::Display for ElfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotElf => f.write_str("not an ELF file (expected a kernel built by cargo)"),
            Self::WrongKind(what) => write!(f, "not an x86_64 kernel ELF: {what}"),
            Self::Truncated => f.write_str("truncated or corrupt ELF file"),
        }
    }
}

const EM_X86_64: u16 = 62;

fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    let bytes = b.get(off..off + 2).ok_or(ElfError::Truncated)?;
    Ok(u16::from_le_bytes(
        bytes.try_into().map_err(|_| ElfError::Truncated)?,
    ))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    let bytes = b.get(off..off + 4).ok_or(ElfError::Truncated)?;
    Ok(u32::from_le_bytes(
        bytes.try_into().map_err(|_| ElfError::Truncated)?,
    ))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    let bytes = b.get(off..off + 8).ok_or(ElfError::Truncated)?;
    Ok(u64::from_le_bytes(
        bytes.try_into().map_err(|_| ElfError::Truncated)?,
    ))
}

/// Checks that `elf` is a 64-bit little-endian x86_64 executable.
pub fn check_kernel(elf: &[u8]) -> Result<(), ElfError> {
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(ElfError::NotElf);
    }
    if elf.get(4) != Some(&2) {
        return Err(ElfError::WrongKind("not 64-bit"));
    }
    if elf.get(5) != Some(&1) {
        return Err(ElfError::WrongKind("not little-endian"));
    }
    if u16_at(elf, 18)? != EM_X86_64 {
        return Err(ElfError::WrongKind("machine is not x86_64"));
    }
    Ok(())
}

/// The contents of the section called `name`, if the ELF has one.
pub fn section<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    find_section(elf, name).ok().flatten()
}

fn find_section<'a>(elf: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, ElfError> {
    check_kernel(elf)?;
    let shoff = usize::try_from(u64_at(elf, 0x28)?).map_err(|_| ElfError::Truncated)?;
    let shentsize = usize::from(u16_at(elf, 0x3A)?);
    let shnum = usize::from(u16_at(elf, 0x3C)?);
    let shstrndx = usize::from(u16_at(elf, 0x3E)?);
    let header = |i: usize| shoff + i * shentsize;
    let strtab_off = u64_at(elf, header(shstrndx) + 0x18)? as usize;
    for i in 0..shnum {
        let h = header(i);
        let name_off = strtab_off + u32_at(elf, h)? as usize;
        let rest = elf.get(name_off..).ok_or(ElfError::Truncated)?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(ElfError::Truncated)?;
        if &rest[..end] == name.as_bytes() {
            let off = u64_at(elf, h + 0x18)? as usize;
            let size = u64_at(elf, h + 0x20)? as usize;
            return elf
                .get(off..off + size)
                .map(Some)
                .ok_or(ElfError::Truncated);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf_files() {
        assert_eq!(check_kernel(b"#!/bin/sh\necho hi\n"), Err(ElfError::NotElf));
        assert_eq!(check_kernel(b""), Err(ElfError::NotElf));
    }

    #[test]
    fn rejects_32_bit_elf() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 1;
        assert_eq!(check_kernel(&elf), Err(ElfError::WrongKind("not 64-bit")));
    }

    #[test]
    fn reads_a_section_of_the_runner_itself() {
        // The runner is itself an x86_64 ELF with a `.text` section.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(check_kernel(&me).is_ok());
        assert!(section(&me, ".text").is_some_and(|s| !s.is_empty()));
        assert!(section(&me, ".no_such_section").is_none());
    }
}
