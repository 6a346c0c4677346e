#!/usr/bin/env bash
# Installs what building and booting the kernel needs, if it is missing, and says what it did:
#   - the pinned nightly toolchain of rust-toolchain.toml, with its components and the kernel target;
#   - the stable toolchain of kheap's rust-version (its stable-build test);
#   - QEMU (qemu-system-x86_64).
# Safe to run again: it only acts on what is missing, and prints nothing then. Called by ./run.sh
# and ./test.sh. What the installers print goes to a log under the target directory, shown only if
# they fail, so a set-up is a few lines.
set -euo pipefail
cd "$(dirname "$0")/.."

toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
logs=${CARGO_TARGET_DIR:-target}

# Runs "$@" with its output appended to the log file $1 (shown if the command fails).
logged() {
    local log=$1
    shift
    if "$@" >>"$log" 2>&1; then
        return 0
    fi
    echo "error: \`$*\` failed; its output (also in $log):" >&2
    tail -n 40 "$log" | sed 's/^/    /' >&2
    return 1
}

if ! command -v rustup >/dev/null 2>&1; then
    echo "error: rustup not found; install it from the rustup installer, then run this again" >&2
    exit 1
fi

# Read once: `rustup … | grep -q` under pipefail fails when grep stops reading early.
toolchains=$(rustup toolchain list)
need_toolchain=0
if ! grep -q "^${toolchain}" <<<"$toolchains"; then
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
    echo "setup: installing toolchain $toolchain with its components and targets (log: $logs/setup-toolchain.log)" >&2
    # With no arguments, rustup installs exactly what rust-toolchain.toml names.
    mkdir -p "$logs" && : >"$logs/setup-toolchain.log"
    logged "$logs/setup-toolchain.log" rustup toolchain install --no-self-update
    echo "setup: toolchain $toolchain installed" >&2
fi

# The heap crate's minimum Rust version (its rust-version), on which a host test builds it as
# another project would (kernel/heap/host/tests/stable_build.rs).
msrv=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' kernel/heap/Cargo.toml)
[[ "$msrv" =~ ^[0-9]+\.[0-9]+$ ]] && msrv="$msrv.0"
if [ -n "$msrv" ] && ! grep -q "^${msrv}-" <<<"$toolchains"; then
    echo "setup: installing Rust $msrv (kheap's minimum version, for its stable-build test; log: $logs/setup-msrv.log)" >&2
    mkdir -p "$logs" && : >"$logs/setup-msrv.log"
    logged "$logs/setup-msrv.log" rustup toolchain install "$msrv" --profile minimal --no-self-update
fi

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    fix="apt-get update && apt-get install -y qemu-system-x86"
    if [ "$(id -u)" = 0 ]; then
        sudo=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo)
    else
        echo "error: qemu-system-x86_64 not found; install it with: sudo sh -c '$fix'" >&2
        exit 1
    fi
    echo "setup: installing QEMU (${sudo[*]:+sudo }$fix; log: $logs/setup-qemu.log)" >&2
    mkdir -p "$logs" && : >"$logs/setup-qemu.log"
    logged "$logs/setup-qemu.log" "${sudo[@]}" apt-get update
    logged "$logs/setup-qemu.log" "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y qemu-system-x86
    if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
        echo "error: apt-get installed qemu-system-x86 but qemu-system-x86_64 is not on PATH" >&2
        exit 1
    fi
    echo "setup: $(qemu-system-x86_64 --version | head -n 1) installed" >&2
fi
