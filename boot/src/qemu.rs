//! One QEMU process: its serial output as lines, its own messages on stderr, and a look at the VGA
//! text screen through QEMU's QMP socket.
//!
//! QEMU's stderr is held back until the machine prints its first byte: if QEMU exits before that
//! (a bad option in `KERNEL_QEMU_ARGS`, say), its message belongs in the runner's "QEMU failed to
//! start" error rather than above it; after that, it is passed through as it comes.
//!
//! The screen matters because the BIOS bootloader's early stages print only there: with
//! `-display none` a panic in them (too little RAM, a file the bootloader cannot load) is
//! otherwise invisible. [`Qemu::screen_text`] reads the 80×25 text buffer at `0xb8000` with the
//! monitor command `xp`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// What the serial port produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The first bytes arrived (sent once, before any line).
    Started,
    /// One line, without its line ending.
    Line(String),
}

/// QEMU's stderr: held back, or passed through.
#[derive(Debug, Default)]
struct Stderr {
    held: Vec<String>,
    live: bool,
}

/// A running QEMU.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    output: Receiver<Output>,
    stderr: Arc<Mutex<Stderr>>,
    stderr_thread: Option<JoinHandle<()>>,
    qmp_path: PathBuf,
    qmp: Option<BufReader<UnixStream>>,
}

impl Qemu {
    /// Starts QEMU with `args` (plus a QMP socket), stdin closed, serial output (stdout) and stderr
    /// piped.
    pub fn spawn(args: &[String]) -> Result<Self, String> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let qmp_path = std::env::temp_dir().join(format!(
            "kernel-boot-{}-{}.qmp",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&qmp_path);
        let mut child = Command::new(QEMU)
            .args(args)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {QEMU}: {e}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr_pipe = child.stderr.take().expect("stderr is piped");
        let stderr = Arc::new(Mutex::new(Stderr::default()));
        let held = Arc::clone(&stderr);
        let stderr_thread = thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                let mut s = held.lock().unwrap_or_else(|e| e.into_inner());
                if s.live {
                    eprintln!("{line}");
                } else {
                    s.held.push(line);
                }
            }
        });
        Ok(Self {
            child,
            output: spawn_line_reader(stdout),
            stderr,
            stderr_thread: Some(stderr_thread),
            qmp_path,
            qmp: None,
        })
    }

    /// The serial output.
    pub fn output(&self) -> &Receiver<Output> {
        &self.output
    }

    /// From now on QEMU's stderr goes straight to ours (what was held back first).
    pub fn release_stderr(&self) {
        let mut s = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        for line in s.held.drain(..) {
            eprintln!("{line}");
        }
        s.live = true;
    }

    /// Waits for QEMU to exit; returns its status and the stderr lines that were held back.
    pub fn wait(&mut self) -> Result<(ExitStatus, String), String> {
        let status = self
            .child
            .wait()
            .map_err(|e| format!("waiting for QEMU: {e}"))?;
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        let mut s = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        Ok((status, std::mem::take(&mut s.held).join("\n")))
    }

    /// Stops QEMU.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The text on the VGA text screen, if QEMU answers and the screen is in text mode (after the
    /// bootloader switched to graphics it is not).
    pub fn screen_text(&mut self) -> Option<String> {
        let bytes = self.read_memory("xp /4000bx 0xb8000").ok()?;
        decode_text_screen(&bytes)
    }

    /// Whether the CPU has stopped for good: halted with interrupts off (`cli; hlt`, what the
    /// bootloader's panic handlers end in). `None` if QEMU does not answer.
    pub fn halted(&mut self) -> Option<bool> {
        let registers = self.monitor("info registers").ok()?;
        Some(is_halted(&registers))
    }

    /// Runs a monitor command that dumps memory as `0x..` bytes and returns them.
    fn read_memory(&mut self, command: &str) -> Result<Vec<u8>, String> {
        Ok(parse_hex_dump(&self.monitor(command)?))
    }

    /// Runs a human-monitor command through QMP and returns the raw reply.
    fn monitor(&mut self, command: &str) -> Result<String, String> {
        if self.qmp.is_none() {
            self.qmp = Some(self.connect_qmp()?);
        }
        let qmp = self.qmp.as_mut().expect("connected");
        let request = format!(
            "{{\"execute\":\"human-monitor-command\",\"arguments\":{{\"command-line\":\"{command}\"}}}}\n"
        );
        qmp.get_mut()
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        read_reply(qmp)
    }

    fn connect_qmp(&self) -> Result<BufReader<UnixStream>, String> {
        let stream = UnixStream::connect(&self.qmp_path).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut qmp = BufReader::new(stream);
        let mut greeting = String::new();
        qmp.read_line(&mut greeting).map_err(|e| e.to_string())?;
        qmp.get_mut()
            .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
            .map_err(|e| e.to_string())?;
        read_reply(&mut qmp)?;
        Ok(qmp)
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.qmp_path);
    }
}

/// Reads QMP lines until the reply (`"return"` or `"error"`), skipping events.
fn read_reply(qmp: &mut BufReader<UnixStream>) -> Result<String, String> {
    loop {
        let mut line = String::new();
        match qmp.read_line(&mut line) {
            Ok(0) => return Err("QMP closed".into()),
            Ok(_) if line.contains("\"return\"") => return Ok(line),
            Ok(_) if line.contains("\"error\"") => return Err(line),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The bytes of an `xp /Nbx` dump (lines `00000000000b8000: 0x50 0x07 ...`).
fn parse_hex_dump(reply: &str) -> Vec<u8> {
    reply
        .split(|c: char| c.is_whitespace() || c == '"' || c == '\\')
        .filter_map(|w| w.strip_prefix("0x"))
        .filter_map(|h| u8::from_str_radix(h.get(..2)?, 16).ok())
        .collect()
}

/// The non-blank lines of an 80×25 text screen (character, attribute pairs), or `None` if it does
/// not look like text.
pub fn decode_text_screen(bytes: &[u8]) -> Option<String> {
    let chars: Vec<u8> = bytes.iter().step_by(2).copied().collect();
    if chars.is_empty() {
        return None;
    }
    let texty = chars
        .iter()
        .filter(|&&c| c == 0 || c == b' ' || c.is_ascii_graphic())
        .count();
    if texty * 10 < chars.len() * 9 {
        return None;
    }
    let lines: Vec<String> = chars
        .chunks(80)
        .map(|row| {
            row.iter()
                .map(|&c| if c.is_ascii_graphic() { c as char } else { ' ' })
                .collect::<String>()
                .trim_end()
                .to_owned()
        })
        .filter(|l| !l.is_empty())
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// Whether `info registers` shows the CPU halted (`HLT=1`) with interrupts off (flag IF, bit 9 of
/// `RFL`/`EFL`, clear).
fn is_halted(registers: &str) -> bool {
    let flags = registers
        .split(|c: char| c.is_whitespace() || c == '"' || c == '\\')
        .find_map(|w| w.strip_prefix("RFL=").or_else(|| w.strip_prefix("EFL=")))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok());
    registers.contains("HLT=1") && flags.is_some_and(|f| f & (1 << 9) == 0)
}

/// Whether screen or serial text is a bootloader panic.
pub fn is_panic(text: &str) -> bool {
    text.contains("PANIC") || text.contains("panicked at")
}

/// Reads QEMU's stdout on a thread and sends it line by line; the channel closes at EOF.
fn spawn_line_reader(mut stdout: impl Read + Send + 'static) -> Receiver<Output> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut pending = Vec::new();
        let mut started = false;
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !started {
                        started = true;
                        if tx.send(Output::Started).is_err() {
                            return;
                        }
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=pos).collect();
                        let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                        let text = text.trim_end_matches('\r').to_owned();
                        if tx.send(Output::Line(text)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if !pending.is_empty() {
            let _ = tx.send(Output::Line(String::from_utf8_lossy(&pending).into_owned()));
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_hex_dump_reply() {
        let reply = r#"{"return": "00000000000b8000: 0x50 0x07 0x41 0x07\r\n00000000000b8004: 0x4e 0x07\r\n"}"#;
        assert_eq!(parse_hex_dump(reply), [0x50, 0x07, 0x41, 0x07, 0x4e, 0x07]);
    }

    fn screen(rows: &[&str], fill: u8) -> Vec<u8> {
        let mut bytes = Vec::new();
        for r in 0..25 {
            let row = rows.get(r).copied().unwrap_or("");
            for c in 0..80 {
                bytes.push(row.as_bytes().get(c).copied().unwrap_or(fill));
                bytes.push(0x07);
            }
        }
        bytes
    }

    #[test]
    fn tells_a_stopped_cpu() {
        let stopped = r#"{"return": "RAX=0000000000000000 RBX=0000000000000001\r\nRIP=000000000012a3f1 RFL=00000046 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\r\n"}"#;
        assert!(is_halted(stopped));
        // Waiting for an interrupt is not stopping.
        assert!(!is_halted(&stopped.replace("RFL=00000046", "RFL=00000246")));
        assert!(!is_halted(&stopped.replace("HLT=1", "HLT=0")));
        assert!(!is_halted(
            "EIP=0000fff0 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0"
        ));
        assert!(is_halted(
            "EIP=00007c00 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1"
        ));
    }

    #[test]
    fn decodes_the_text_screen() {
        let text = decode_text_screen(&screen(
            &["SeaBIOS", "", "PANIC: protected_mode.rs:96:13"],
            b' ',
        ))
        .unwrap();
        assert_eq!(text, "SeaBIOS\nPANIC: protected_mode.rs:96:13");
        assert!(is_panic(&text));
        // After the switch to a graphics mode the buffer holds no text.
        assert_eq!(decode_text_screen(&screen(&[], 0xff)), None);
        assert_eq!(decode_text_screen(&screen(&[], 0)), None);
        assert_eq!(decode_text_screen(&[]), None);
    }

    #[test]
    fn line_reader_announces_output_then_splits_lines() {
        let rx = spawn_line_reader(&b"one\r\ntwo\npartial"[..]);
        let got: Vec<Output> = rx.iter().collect();
        assert_eq!(
            got,
            [
                Output::Started,
                Output::Line("one".into()),
                Output::Line("two".into()),
                Output::Line("partial".into())
            ]
        );
        let rx = spawn_line_reader(&b""[..]);
        assert_eq!(rx.iter().count(), 0);
    }
}
