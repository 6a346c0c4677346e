//! `boot/setup.sh` installing QEMU, against stand-ins for `apt-get`, `rustup` and `id` on a `PATH`
//! of their own: the installers' chatter goes to a log, the user sees a few lines, and the log
//! when the installation fails.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A directory whose `bin/` holds the few real tools setup.sh uses and the stand-ins.
fn sandbox(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("boot-setup-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in [
        "bash", "sed", "grep", "tail", "head", "mkdir", "dirname", "env", "cat", "rm", "sh",
        "chmod",
    ] {
        let real = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no {tool} on this machine"));
        symlink(real, bin.join(tool)).unwrap();
    }
    let toolchain = std::fs::read_to_string(workspace().join("rust-toolchain.toml")).unwrap();
    let channel = toolchain
        .lines()
        .find_map(|l| l.strip_prefix("channel = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap();
    // kheap's minimum Rust version, which setup.sh also installs (`1.95` is toolchain `1.95.0`).
    let heap = std::fs::read_to_string(workspace().join("kernel/heap/Cargo.toml")).unwrap();
    let msrv = heap
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap();
    script(
        &bin.join("rustup"),
        &format!(
            "case \"$1 $2\" in\n\
             'toolchain list') echo '{channel}-x86_64-unknown-linux-gnu (override)'; echo '{msrv}.0-x86_64-unknown-linux-gnu' ;;\n\
             'component list') printf 'rust-src\\nllvm-tools-x86_64-unknown-linux-gnu\\nclippy\\nrustfmt\\n' ;;\n\
             'target list') echo x86_64-unknown-none ;;\n\
             esac\n"
        ),
    );
    script(&bin.join("id"), "echo 0\n");
    // apt-get: a hundred progress lines; `install` puts a QEMU on the PATH unless told to fail.
    script(
        &bin.join("apt-get"),
        &format!(
            "i=0; while [ $i -lt 100 ]; do echo \"Progress: [ $i%]\"; i=$((i+1)); done\n\
             if [ \"$1\" = install ]; then\n\
               if [ -n \"$FAKE_APT_FAIL\" ]; then echo 'E: Unable to locate package qemu-system-x86'; exit 100; fi\n\
               printf '#!/bin/sh\\necho QEMU emulator version 7.2.22\\n' > {bin}/qemu-system-x86_64\n\
               chmod 755 {bin}/qemu-system-x86_64\n\
             fi\n",
            bin = bin.display()
        ),
    );
    dir
}

fn setup(dir: &Path, fail: bool) -> Output {
    let mut cmd = Command::new(dir.join("bin/bash"));
    cmd.arg(workspace().join("boot/setup.sh"))
        .env_clear()
        .env("PATH", dir.join("bin"))
        .env("CARGO_TARGET_DIR", dir.join("target"));
    if fail {
        cmd.env("FAKE_APT_FAIL", "1");
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn installing_qemu_takes_two_lines_and_logs_the_rest() {
    let dir = sandbox("ok");
    let out = setup(&dir, false);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(text(&out.stdout), "");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].starts_with("setup: installing QEMU (apt-get update && apt-get install"));
    assert_eq!(lines[1], "setup: QEMU emulator version 7.2.22 installed");
    let log = std::fs::read_to_string(dir.join("target/setup-qemu.log")).unwrap();
    assert_eq!(log.matches("Progress:").count(), 200);

    // Once installed, nothing is printed.
    let again = setup(&dir, false);
    assert!(again.status.success());
    assert_eq!(text(&again.stderr), "");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_failed_install_shows_the_log() {
    let dir = sandbox("fail");
    let out = setup(&dir, true);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "error: `env DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-system-x86` failed"
        ),
        "{err}"
    );
    assert!(
        err.contains("    E: Unable to locate package qemu-system-x86"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
