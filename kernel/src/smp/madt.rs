//! Which CPUs the machine has: the local APICs listed in the ACPI MADT, read with the `acpi`
//! crate through the bootloader's mapping of all physical memory.
//!
//! `acpi` 5.2 is used rather than 6.x/7.x: those merge the AML interpreter's host interface
//! (port and PCI access, mutexes, sleeping — some 25 methods) into the one handler trait that
//! table parsing needs; 5.2's handler is just "map this physical range", which is all the MADT
//! takes. Its tables are read once, at boot, by the boot CPU.

use core::ptr::NonNull;

use acpi::madt::{Madt, MadtEntry};
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};

use super::percpu::MAX_CPUS;

/// Local APIC flag: the processor is enabled.
const FLAG_ENABLED: u32 = 1 << 0;
/// Local APIC flag: the processor can be brought online (ACPI 6.3+; only if not enabled).
const FLAG_ONLINE_CAPABLE: u32 = 1 << 1;

/// Why the CPU list could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MadtError {
    /// The bootloader found no RSDP.
    NoRsdp,
    /// The ACPI tables have no MADT.
    NoMadt,
    /// The RSDP, the root table or the MADT failed `acpi`'s checks (signature, checksum).
    InvalidTables,
}

impl From<acpi::AcpiError> for MadtError {
    fn from(e: acpi::AcpiError) -> Self {
        match e {
            acpi::AcpiError::TableMissing(_) => Self::NoMadt,
            _ => Self::InvalidTables,
        }
    }
}

impl core::fmt::Display for MadtError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRsdp => f.write_str("no ACPI RSDP from the bootloader"),
            Self::NoMadt => f.write_str("no MADT in the ACPI tables"),
            Self::InvalidTables => f.write_str("invalid ACPI tables"),
        }
    }
}

/// The processors of the MADT that can be started.
#[derive(Debug, Clone, Copy)]
pub struct CpuList {
    /// Physical address of the local APIC registers (the MADT's, or its 64-bit override).
    pub lapic_phys: u64,
    apic_ids: [u32; MAX_CPUS],
    len: usize,
    /// Usable processors left out: beyond [`MAX_CPUS`], or with an x2APIC id above 255 (which
    /// xAPIC cannot address).
    pub skipped: usize,
}

impl CpuList {
    /// The local APIC ids, in MADT order.
    pub fn apic_ids(&self) -> &[u32] {
        &self.apic_ids[..self.len]
    }

    fn push(&mut self, apic_id: u32) {
        if apic_id > 0xff || self.len == MAX_CPUS || self.apic_ids().contains(&apic_id) {
            self.skipped += 1;
        } else {
            self.apic_ids[self.len] = apic_id;
            self.len += 1;
        }
    }
}

/// Reads the tables through the physical-memory mapping at `phys_offset`.
#[derive(Debug, Clone, Copy)]
struct PhysMap {
    phys_offset: u64,
}

impl AcpiHandler for PhysMap {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let virt = (self.phys_offset + physical_address as u64) as *mut T;
        // SAFETY: all physical memory is mapped at `phys_offset` for the kernel's life, so the
        // range is readable there; the address is non-null (the offset is in the higher half).
        unsafe {
            PhysicalMapping::new(
                physical_address,
                NonNull::new(virt).expect("physical-memory mapping is in the higher half"),
                size,
                size,
                *self,
            )
        }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {
        // Nothing was mapped: the physical-memory mapping stays.
    }
}

/// Lists the processors of the MADT found from the RSDP at `rsdp` (physical), reading through
/// the physical-memory mapping at `phys_offset`.
///
/// # Errors
///
/// [`MadtError::NoRsdp`] if `rsdp` is `None`, [`MadtError::NoMadt`],
/// [`MadtError::InvalidTables`].
pub fn cpus(rsdp: Option<u64>, phys_offset: u64) -> Result<CpuList, MadtError> {
    let rsdp = rsdp.ok_or(MadtError::NoRsdp)?;
    let handler = PhysMap { phys_offset };
    // SAFETY: the bootloader found the RSDP at this physical address (it checked its signature);
    // `acpi` validates its checksum and those of the tables it reads.
    let tables = unsafe { AcpiTables::from_rsdp(handler, rsdp as usize) }?;
    let madt = tables.find_table::<Madt>()?;
    let mut list = CpuList {
        lapic_phys: u64::from(madt.get().local_apic_address),
        apic_ids: [0; MAX_CPUS],
        len: 0,
        skipped: 0,
    };
    let usable = |flags: u32| flags & (FLAG_ENABLED | FLAG_ONLINE_CAPABLE) != 0;
    for entry in madt.get().entries() {
        match entry {
            MadtEntry::LocalApic(e) if usable(e.flags) => list.push(u32::from(e.apic_id)),
            MadtEntry::LocalX2Apic(e) if usable(e.flags) => list.push(e.x2apic_id),
            MadtEntry::LocalApicAddressOverride(e) => list.lapic_phys = e.local_apic_address,
            _ => {}
        }
    }
    Ok(list)
}
