#!/usr/bin/env bash
# Runs every test: host unit tests of the heap and kernel logic, and each test kernel in QEMU
# (installs what is missing first). Arguments go to `cargo test`, e.g. `./test.sh heap`.
set -euo pipefail
cd "$(dirname "$0")"
boot/setup.sh
# The QEMU runner (boot/, its own target directory) builds beside the tests: on a fresh machine
# that is minutes of the bootloader's BIOS stages that need not wait for the tests' compilation.
# Its output is in the log; the first kernel test waits for it, and reports it should it fail.
logs=${CARGO_TARGET_DIR:-target}
mkdir -p "$logs"
boot/cargo-runner --build-only >"$logs/runner-build.log" 2>&1 &
exec cargo test "$@"
