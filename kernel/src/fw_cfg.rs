//! Reading QEMU's firmware configuration device (fw_cfg): how the host runner passes arguments
//! (which test to start from, a test-name filter) into a kernel that has no command line.
//!
//! The runner adds `-fw_cfg name=opt/ktest/start,string=3`; the kernel looks the name up in fw_cfg's
//! file directory and reads the bytes. Legacy I/O-port interface: write a 16-bit selector to port
//! 0x510, then read the item byte by byte from port 0x511. Directory entries are big-endian.

use x86_64::instructions::port::Port;

const SELECTOR_PORT: u16 = 0x510;
const DATA_PORT: u16 = 0x511;
/// Selector of the signature item ("QEMU").
const SIGNATURE: u16 = 0x0000;
/// Selector of the file directory.
const FILE_DIR: u16 = 0x0019;
/// Length of a file name in a directory entry.
const NAME_LEN: usize = 56;

/// Reads the fw_cfg file `name` into `buf`, returning the bytes read, or `None` if there is no
/// fw_cfg device or no such file. Longer files are truncated to `buf.len()`.
pub fn read_file<'b>(name: &str, buf: &'b mut [u8]) -> Option<&'b [u8]> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        select(SIGNATURE);
        let mut sig = [0u8; 4];
        read_bytes(&mut sig);
        if &sig != b"QEMU" {
            return None;
        }
        select(FILE_DIR);
        let mut count = [0u8; 4];
        read_bytes(&mut count);
        for _ in 0..u32::from_be_bytes(count) {
            let mut size = [0u8; 4];
            let mut select_key = [0u8; 2];
            let mut reserved = [0u8; 2];
            let mut entry_name = [0u8; NAME_LEN];
            read_bytes(&mut size);
            read_bytes(&mut select_key);
            read_bytes(&mut reserved);
            read_bytes(&mut entry_name);
            let len = entry_name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
            if &entry_name[..len] == name.as_bytes() {
                let n = (u32::from_be_bytes(size) as usize).min(buf.len());
                select(u16::from_be_bytes(select_key));
                read_bytes(&mut buf[..n]);
                return Some(&buf[..n]);
            }
        }
        None
    })
}

fn select(key: u16) {
    // SAFETY: 0x510 is fw_cfg's selector port on QEMU's PC machine; writing a selector only chooses
    // which item the data port returns. On machines without fw_cfg the port is unbacked.
    unsafe { Port::<u16>::new(SELECTOR_PORT).write(key) };
}

fn read_bytes(buf: &mut [u8]) {
    let mut port = Port::<u8>::new(DATA_PORT);
    for b in buf {
        // SAFETY: reading fw_cfg's data port returns the next byte of the selected item and has no
        // other effect.
        *b = unsafe { port.read() };
    }
}
