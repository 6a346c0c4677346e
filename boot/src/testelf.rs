//! Builds small ELF files for tests: a header, program headers and named sections. Used by the
//! unit tests (`crate::testelf`) and included by `boot/host/tests/runner.rs` with `#[path]`.

#![allow(dead_code)]

/// The ELF `p_type` of a loadable segment.
pub const PT_LOAD: u32 = 1;
/// The ELF `p_type` of a program interpreter.
pub const PT_INTERP: u32 = 3;

/// An x86_64 `ET_DYN` ELF with `segments` (type, memsz) and `sections` (name, contents).
pub fn elf(machine: u16, segments: &[(u32, &[u8], u64)], sections: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2;
    out[5] = 1;
    out[6] = 1;
    out[16..18].copy_from_slice(&3u16.to_le_bytes());
    out[18..20].copy_from_slice(&machine.to_le_bytes());
    // Segment contents, then program headers.
    let mut seg_offsets = Vec::new();
    for (_, data, _) in segments {
        seg_offsets.push(out.len() as u64);
        out.extend_from_slice(data);
    }
    let phoff = out.len() as u64;
    for ((kind, data, memsz), off) in segments.iter().zip(&seg_offsets) {
        let mut ph = [0u8; 56];
        ph[0..4].copy_from_slice(&kind.to_le_bytes());
        ph[8..16].copy_from_slice(&off.to_le_bytes());
        ph[32..40].copy_from_slice(&(data.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        out.extend_from_slice(&ph);
    }
    // Section contents and the name table (section 0 is the null section).
    let mut names = vec![0u8];
    let mut headers = vec![[0u8; 64]];
    for (name, data) in sections.iter().copied().chain([(".shstrtab", &[][..])]) {
        let mut sh = [0u8; 64];
        sh[0..4].copy_from_slice(&(names.len() as u32).to_le_bytes());
        names.extend_from_slice(name.as_bytes());
        names.push(0);
        // SHT_STRTAB for the name table, SHT_PROGBITS for the others.
        let kind: u32 = if *name == *".shstrtab" { 3 } else { 1 };
        sh[4..8].copy_from_slice(&kind.to_le_bytes());
        let (off, len) = if *name == *".shstrtab" {
            (0, 0)
        } else {
            let off = out.len() as u64;
            out.extend_from_slice(data);
            (off, data.len() as u64)
        };
        sh[0x18..0x20].copy_from_slice(&off.to_le_bytes());
        sh[0x20..0x28].copy_from_slice(&len.to_le_bytes());
        headers.push(sh);
    }
    let strtab_off = out.len() as u64;
    let strtab_len = names.len() as u64;
    out.extend_from_slice(&names);
    let last = headers.last_mut().expect("the name table");
    last[0x18..0x20].copy_from_slice(&strtab_off.to_le_bytes());
    last[0x20..0x28].copy_from_slice(&strtab_len.to_le_bytes());
    let shoff = out.len() as u64;
    for h in &headers {
        out.extend_from_slice(h);
    }
    out[0x20..0x28].copy_from_slice(&phoff.to_le_bytes());
    out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
    out[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
    out[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    out[0x38..0x3A].copy_from_slice(&(segments.len() as u16).to_le_bytes());
    out[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
    out[0x3C..0x3E].copy_from_slice(&(headers.len() as u16).to_le_bytes());
    out[0x3E..0x40].copy_from_slice(&((headers.len() - 1) as u16).to_le_bytes());
    out
}
