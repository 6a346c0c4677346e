#!/usr/bin/env bash
# Runs every test: host unit tests of the heap and kernel logic, and each test kernel in QEMU
# (installs what is missing first). Arguments go to `cargo test`, e.g. `./test.sh heap`.
set -euo pipefail
cd "$(dirname "$0")"
boot/setup.sh
exec cargo test "$@"
