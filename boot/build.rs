//! Records the host target triple, which the runner needs to find `llvm-strip` in the sysroot.
fn main() {
    let target = std::env::var("TARGET").expect("cargo sets TARGET for build scripts");
    println!("cargo:rustc-env=BOOT_HOST_TRIPLE={target}");
}
