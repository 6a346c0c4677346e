#!/usr/bin/env bash
# Installs what building and booting the kernel needs, if it is missing, and says what it did:
#   - the pinned nightly toolchain of rust-toolchain.toml, with its components and the kernel target;
#   - QEMU (qemu-system-x86_64).
# Safe to run again: it only acts on what is missing. Called by ./run.sh and ./test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)

if ! command -v rustup >/dev/null 2>&1; then
    echo "error: rustup not found; install it from the rustup installer, then run this again" >&2
    exit 1
fi

need_toolchain=0
if ! rustup toolchain list | grep -q "^${toolchain}"; then
    need_toolchain=1
else
    installed=$(rustup component list --installed --toolchain "$toolchain" 2>/dev/null || true)
    for c in rust-src llvm-tools clippy rustfmt; do
        grep -q "^${c}" <<<"$installed" || need_toolchain=1
    done
    rustup target list --installed --toolchain "$toolchain" 2>/dev/null \
        | grep -q '^x86_64-unknown-none$' || need_toolchain=1
fi
if [ "$need_toolchain" = 1 ]; then
    echo "setup: installing toolchain $toolchain (components and targets from rust-toolchain.toml)" >&2
    # With no arguments, rustup installs exactly what rust-toolchain.toml names.
    rustup toolchain install --no-self-update >&2
fi

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    fix="apt-get update && apt-get install -y qemu-system-x86"
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing QEMU ($fix)" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >&2
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        echo "setup: installing QEMU (sudo $fix)" >&2
        sudo apt-get update -qq >&2 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >&2
    else
        echo "error: qemu-system-x86_64 not found; install it with: sudo sh -c '$fix'" >&2
        exit 1
    fi
fi
