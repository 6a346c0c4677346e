#!/usr/bin/env bash
# Boots the kernel in QEMU with its serial output on this terminal (installs what is missing first).
# Arguments go to `cargo run`, e.g. `./run.sh --release`.
set -euo pipefail
cd "$(dirname "$0")"
boot/setup.sh
exec cargo run "$@"
