//! kheap as another project would use it: a fresh project outside this workspace that depends on
//! kheap by path, and one that depends on it by git (this repository's committed `HEAD`), each
//! built — and the path one run — with the stable toolchain of kheap's `rust-version`.
//!
//! This catches what broke adoption before (issue 11): a manifest that inherits from the
//! workspace (`[lints] workspace = true`) makes cargo read the workspace root, whose nightly-only
//! `cargo-features` fail on stable ("requires a nightly version of Cargo"; as a git dependency
//! "no matching package named `kheap` found"). It needs the toolchain installed
//! (`boot/setup.sh` installs it) and no network (the git dependency is a `file://` URL).
#![cfg(not(miri))]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

/// The toolchain named by kheap's `rust-version` (`1.88` → `1.88.0`).
fn msrv_toolchain() -> String {
    let manifest = std::fs::read_to_string(repo().join("kernel/heap/Cargo.toml")).unwrap();
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("kernel/heap/Cargo.toml has a rust-version")
        .trim_matches('"');
    if version.matches('.').count() == 1 {
        format!("{version}.0")
    } else {
        version.to_owned()
    }
}

/// The adopter's program: kheap over a static array as the global allocator of a std program.
const MAIN_RS: &str = r#"
use kheap::{FixedRegion, LockedHeap, SpinLock};
use std::collections::BTreeMap;

#[repr(C, align(4096))]
struct Arena([u8; 4 << 20]);
static mut ARENA: Arena = Arena([0; 4 << 20]);

#[global_allocator]
// SAFETY: the arena is used by this heap alone.
static HEAP: LockedHeap<SpinLock, FixedRegion> =
    LockedHeap::new(unsafe { FixedRegion::array(&raw mut ARENA.0) });

fn main() {
    let v: Vec<u64> = (0..10_000).collect();
    let s = format!("{}", v.iter().sum::<u64>());
    let m: BTreeMap<u32, String> = (0..100).map(|i| (i, i.to_string())).collect();
    let pages = HEAP.lock().unwrap().stats().pages.total;
    assert!(pages > 0 && m[&42] == "42");
    println!("kheap on stable: sum {s}, {pages} heap pages");
}
"#;

/// Writes a project `name` under a fresh directory of the system's temporary directory (outside
/// this repository, so none of its cargo configuration applies) with `dependency` as its kheap
/// line, and returns its directory. `workspace`: whether the project is also a workspace root.
///
/// Both tests make the project a workspace root, the harder case: cargo then looks for the
/// workspace of a path dependency outside the project and reads this repository's root manifest
/// on the way, which therefore must not use nightly `cargo-features` (only the host-forced member
/// crates do, and stable cargo never reads those).
fn project(name: &str, dependency: &str, workspace: bool) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kheap-adopter-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let manifest = format!(
        "[package]\nname = \"adopter\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
         [dependencies]\n{dependency}\n{}",
        if workspace { "\n[workspace]\n" } else { "" }
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(dir.join("src/main.rs"), MAIN_RS).unwrap();
    dir
}

/// `cargo <args>` on the MSRV toolchain in `dir`, with none of this cargo's environment (the
/// variables cargo sets for tests, or a toolchain override), and `extra` variables; panics with
/// cargo's output on failure, else returns its stdout.
fn cargo(dir: &Path, args: &[&str], extra: &[(&str, &Path)]) -> String {
    let toolchain = msrv_toolchain();
    let mut cmd = Command::new("rustup");
    cmd.args(["run", &toolchain, "cargo"])
        .args(args)
        .current_dir(dir);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let inherited = (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTDOC")
            || ["RUSTFLAGS", "RUSTUP_TOOLCHAIN", "RUST_TOOLCHAIN"].contains(&key.as_str());
        if inherited {
            cmd.env_remove(&key);
        }
    }
    for (key, value) in extra {
        cmd.env(key, value);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run rustup ({e}): is rustup installed?"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("is not installed") {
        panic!(
            "toolchain {toolchain} (kheap's rust-version) is not installed: \
             `rustup toolchain install {toolchain} --profile minimal` (boot/setup.sh does it)"
        );
    }
    assert!(
        out.status.success(),
        "cargo {args:?} failed in {}:\n{stderr}",
        dir.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kheap_builds_and_runs_on_stable_as_a_path_dependency() {
    let heap = repo().join("kernel/heap").canonicalize().unwrap();
    let dir = project(
        "path",
        &format!(
            "kheap = {{ path = {:?}, features = [\"lock_api\", \"debug-checks\"] }}",
            heap.display()
        ),
        true,
    );
    // Offline: `lock_api` comes from the local registry cache, as it did for this workspace.
    let out = cargo(&dir, &["run", "--quiet", "--offline"], &[]);
    assert!(out.contains("kheap on stable: sum 49995000"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kheap_builds_on_stable_as_a_git_dependency() {
    let repo = repo().canonicalize().unwrap();
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(&repo)
        .output()
        .expect("git");
    assert!(
        head.status.success(),
        "not a git checkout: {}",
        repo.display()
    );
    let head = String::from_utf8(head.stdout).unwrap();
    let dir = project(
        "git",
        &format!(
            "kheap = {{ git = \"file://{}\", rev = \"{}\" }}",
            repo.display(),
            head.trim()
        ),
        true,
    );
    // A cargo home of its own: the checkout goes there, not into the user's.
    let home = dir.join("cargo-home");
    cargo(&dir, &["build", "--quiet"], &[("CARGO_HOME", &home)]);
    let _ = std::fs::remove_dir_all(&dir);
}
