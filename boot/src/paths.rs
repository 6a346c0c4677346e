//! Where the runner writes its files: disk images and stripped kernel copies go under the cargo
//! target directory (`target/boot-images/`), never next to the kernel it was given (which may be
//! anywhere, `/usr/bin` included).

use std::env;
use std::path::{Path, PathBuf};

/// The directory for disk images: `$CARGO_TARGET_DIR/boot-images` if that is set, else
/// `boot-images` in the target directory the runner itself was built in (the outermost ancestor of
/// its executable holding cargo's `CACHEDIR.TAG`), else one in the system's temporary directory.
pub fn image_dir() -> PathBuf {
    target_subdir("boot-images")
}

/// The directory for heap pictures: `heap-pictures` where [`image_dir`] puts `boot-images`.
pub fn picture_dir() -> PathBuf {
    target_subdir("heap-pictures")
}

fn target_subdir(name: &str) -> PathBuf {
    if let Some(dir) = env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join(name);
    }
    env::current_exe()
        .ok()
        .and_then(|exe| target_dir_of(&exe))
        .unwrap_or_else(env::temp_dir)
        .join(name)
}

/// The outermost ancestor of `path` that cargo marked as a target directory: it holds a
/// `CACHEDIR.TAG` (cargo writes one at the top of its target directory, and one per target
/// triple below it) or cargo's `.rustc_info.json` (always at the top; cargo skips the top tag
/// when the directory existed before it, as when `boot/setup.sh` put its logs there first).
pub fn target_dir_of(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .filter(|dir| dir.join("CACHEDIR.TAG").is_file() || dir.join(".rustc_info.json").is_file())
        .last()
        .map(Path::to_path_buf)
}

/// Deletes the files a runner that was killed (Ctrl-C) left in `dir`: those named
/// `<kernel>-<pid>.<kind>` for a process that no longer runs (`/proc/<pid>` is gone). Kept images
/// have no process number in their names and stay.
pub fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(pid) = name.to_str().and_then(owner_pid)
            && !Path::new("/proc").join(pid.to_string()).exists()
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The process number in a name `<kernel>-<pid>.<kind>`, `<kind>` being `bios.img`, `uefi.img` or
/// `stripped`.
fn owner_pid(name: &str) -> Option<u32> {
    let stem = ["bios.img", "uefi.img", "stripped"]
        .iter()
        .find_map(|kind| name.strip_suffix(kind)?.strip_suffix('.'))?;
    stem.rsplit_once('-')?.1.parse().ok()
}

/// A file that is deleted when dropped, unless kept.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    /// Takes charge of `path` (which need not exist yet).
    pub fn new(path: PathBuf, keep: bool) -> Self {
        Self { path, keep }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_outermost_target_dir() {
        let root = env::temp_dir().join(format!("boot-paths-test-{}", std::process::id()));
        let triple = root.join("target/x86_64-unknown-linux-gnu/debug");
        std::fs::create_dir_all(&triple).unwrap();
        std::fs::write(root.join("target/CACHEDIR.TAG"), "").unwrap();
        std::fs::write(
            root.join("target/x86_64-unknown-linux-gnu/CACHEDIR.TAG"),
            "",
        )
        .unwrap();
        assert_eq!(
            target_dir_of(&triple.join("boot")),
            Some(root.join("target"))
        );
        assert_eq!(target_dir_of(Path::new("/")), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn finds_a_target_dir_that_existed_before_cargo() {
        // `boot/setup.sh` creates `target/` for its logs before the first cargo run, and cargo
        // then tags only the per-triple directories; its `.rustc_info.json` marks the top.
        let root = env::temp_dir().join(format!("boot-paths-untagged-{}", std::process::id()));
        let triple = root.join("target/x86_64-unknown-linux-gnu/debug");
        std::fs::create_dir_all(&triple).unwrap();
        std::fs::write(root.join("target/.rustc_info.json"), "{}").unwrap();
        std::fs::write(
            root.join("target/x86_64-unknown-linux-gnu/CACHEDIR.TAG"),
            "",
        )
        .unwrap();
        assert_eq!(
            target_dir_of(&triple.join("boot")),
            Some(root.join("target"))
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn stale_files_of_dead_runners_are_removed() {
        assert_eq!(owner_pid("exceptions-1a2b-4242.bios.img"), Some(4242));
        assert_eq!(owner_pid("kernel-17.stripped"), Some(17));
        assert_eq!(owner_pid("kernel.bios.img"), None);
        assert_eq!(owner_pid("kernel-x.uefi.img"), None);
        assert_eq!(owner_pid("notes.txt"), None);

        let dir = env::temp_dir().join(format!("boot-stale-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // No process has number u32::MAX - 1; this test's process is alive.
        let dead = dir.join(format!("kernel-{}.bios.img", u32::MAX - 1));
        let alive = dir.join(format!("kernel-{}.bios.img", std::process::id()));
        let kept = dir.join("kernel.bios.img");
        for f in [&dead, &alive, &kept] {
            std::fs::write(f, "x").unwrap();
        }
        remove_stale(&dir);
        assert!(!dead.exists() && alive.exists() && kept.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temp_files_go_unless_kept() {
        let dir = env::temp_dir();
        let gone = dir.join(format!("boot-temp-gone-{}", std::process::id()));
        let kept = dir.join(format!("boot-temp-kept-{}", std::process::id()));
        std::fs::write(&gone, "x").unwrap();
        std::fs::write(&kept, "x").unwrap();
        drop(TempFile::new(gone.clone(), false));
        drop(TempFile::new(kept.clone(), true));
        assert!(!gone.exists());
        assert!(kept.exists());
        std::fs::remove_file(kept).unwrap();
    }
}
