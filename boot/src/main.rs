fn main() {
    let args: Vec<String> = std::env::args().collect();
    eprintln!("runner args: {args:?}");
    let kernel = std::path::PathBuf::from(&args[1]);
    let img = kernel.with_extension("bios.img");
    bootloader::BiosBoot::new(&kernel).create_disk_image(&img).unwrap();
    let st = std::process::Command::new("qemu-system-x86_64")
        .args(["-drive", &format!("format=raw,file={}", img.display()), "-serial", "stdio", "-display", "none", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(std::process::Stdio::null())
        .status().unwrap();
    eprintln!("qemu: {st:?}");
}
