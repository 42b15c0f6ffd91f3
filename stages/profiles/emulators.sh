#!/usr/bin/env bash
# Sets up QEMU user-mode emulation of other CPUs under $ROOT/.emu/, to run a small
# numpy + onnxruntime script on CPUs this machine lacks (aarch64 cortex-a53 /
# neoverse-n1 / neoverse-v1 / max, and x86-64 models such as Haswell).
# For checking NUMERICS only: emulated timings mean nothing.
#
#   bash stages/profiles/emulators.sh [ROOT]      # ROOT defaults to the repo root
#
# Needs root (apt-get), Debian's archive and PyPI. Idempotent: when .emu/READY
# matches the pins below it does nothing. Nothing is installed system-wide except
# two apt settings: the bookworm-backports source line and the arm64 foreign
# architecture (both only widen what apt can download). QEMU is NOT apt-installed:
# its .deb is extracted into .emu, so no binfmt_misc handler is registered (that
# would be the host kernel's, shared with every container on it).
# See stages/profiles/README.md for how to run a script and the traps.
set -euo pipefail

ROOT="$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/../..}" && pwd)"
EMU="$ROOT/.emu"
ORT_VERSION="${ORT_VERSION:-1.32.0}"
NUMPY_VERSION="${NUMPY_VERSION:-2.4.6}"
PYVER=3.11
EMU_QEMU="${EMU_QEMU:-auto}"   # auto: QEMU 10 from backports if apt has it; 7.2: force the fallback
LAYOUT=1                       # bump when what this script lays down changes
HOST_PY="${HOST_PY:-}"         # a python with pip, used only to download/unpack wheels
if [[ -z "$HOST_PY" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then HOST_PY="$ROOT/.venv/bin/python"; else HOST_PY="$(command -v python3)"; fi
fi
# arm64 packages of the sysroot: python itself plus the libraries its extension
# modules and the numpy/onnxruntime wheels link against (readelf NEEDED).
ARM64_DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3.11
    libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libssl3 libffi8 libbz2-1.0 liblzma5
    libcrypt1 libuuid1 libsqlite3-0 libncursesw6 libtinfo6 libreadline8)

SYSROOT="$EMU/arm64/sysroot"
SITE="$EMU/arm64/site"
BIN="$EMU/bin"
CACHE="$EMU/cache"
T0=$SECONDS
say() { printf '[emulators %3ds] %s\n' "$((SECONDS - T0))" "$*"; }

qemu_version() {   # "10.0.2" from the binary in .emu/bin, empty if none
    [[ -x "$BIN/qemu-aarch64" ]] || return 0
    "$BIN/qemu-aarch64" --version | sed -n '1s/^qemu-aarch64 version \([0-9.]*\).*/\1/p'
}
site_version() {   # version of a distribution installed in .emu/arm64/site
    local d
    for d in "$SITE/$1"-*.dist-info; do [[ -f "$d/METADATA" ]] && sed -n 's/^Version: //p' "$d/METADATA" && return 0; done
    return 0
}
sysroot_pyversion() {
    local f="$SYSROOT/var/lib/emu/python3.11-minimal.version"
    if [[ -f "$f" ]]; then cat "$f"; fi
}
expected_stamp() {
    printf 'layout=%s\nqemu=%s\npython=%s\nonnxruntime=%s\nnumpy=%s\n' \
        "$LAYOUT" "$(qemu_version)" "$(sysroot_pyversion)" "$ORT_VERSION" "$NUMPY_VERSION"
}

# ---- 0. already done? -------------------------------------------------------
if [[ -f "$EMU/READY" && -x "$BIN/qemu-x86_64" && -x "$SYSROOT/usr/bin/python$PYVER" ]] \
   && [[ "$(cat "$EMU/READY")" == "$(expected_stamp)" ]] \
   && [[ "$(site_version onnxruntime)" == "$ORT_VERSION" && "$(site_version numpy)" == "$NUMPY_VERSION" ]]; then
    say "ready (stamp matches): $(tr '\n' ' ' < "$EMU/READY")"
    exit 0
fi
rm -f "$EMU/READY"
mkdir -p "$BIN" "$CACHE/debs" "$CACHE/wheels" "$SYSROOT" "$SITE"
# .emu is not in the repo's .gitignore: make the folder ignore itself.
[[ -f "$EMU/.gitignore" ]] || printf '*\n' > "$EMU/.gitignore"

[[ $EUID -eq 0 ]] || { echo "emulators.sh: needs root for apt-get (run as root)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
# shellcheck source=/dev/null
. /etc/os-release
CODENAME="${VERSION_CODENAME:-}"

# ---- 1. apt sources: bookworm-backports (QEMU 10) and the arm64 architecture --
APT_UPDATE=0
if [[ "$CODENAME" == bookworm ]] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    say "adding bookworm-backports to /etc/apt/sources.list.d/bookworm-backports.list"
    echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/bookworm-backports.list
    APT_UPDATE=1
fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    say "dpkg --add-architecture arm64"
    dpkg --add-architecture arm64
    APT_UPDATE=1
fi
if [[ $APT_UPDATE == 1 ]] || ! apt-cache show python3.11-minimal:arm64 >/dev/null 2>&1; then
    say "apt-get update"
    apt-get update -qq
fi

# Debian version of a package candidate, preferring a suite if it has it.
candidate() {   # candidate PKG [SUITE]
    if [[ -n "${2:-}" ]]; then
        apt-cache madison "$1" 2>/dev/null | awk -v s="$2" '$0 ~ s"/" {print $3; exit}'
    else
        apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}'
    fi
}
# apt-get download into a folder; as root into a root-owned folder apt's _apt user
# cannot write, so download as root (else a warning per package).
fetch_debs() {  # fetch_debs DIR PKG[=VER]...
    local dir="$1"; shift
    (cd "$dir" && apt-get download -qq -o APT::Sandbox::User=root "$@")
}

# ---- 2. QEMU user-mode (static binaries) into .emu/bin -------------------------
if [[ -z "$(qemu_version)" || ! -x "$BIN/qemu-x86_64" ]]; then
    QDIR="$CACHE/debs/qemu"; rm -rf "$QDIR"; mkdir -p "$QDIR"
    QVER=""
    if [[ "$EMU_QEMU" != 7.2 ]]; then
        QVER="$(candidate qemu-user bookworm-backports)"
        [[ -n "$QVER" ]] || QVER="$(candidate qemu-user)"
    fi
    QMAJOR="${QVER#*:}"; QMAJOR="${QMAJOR%%.*}"
    if [[ -n "$QVER" && "$QMAJOR" -ge 9 ]]; then
        # From 9.1 on Debian's qemu-user holds the static binaries (qemu-user-static
        # is a transitional package that also pulls qemu-user-binfmt: not wanted).
        say "downloading qemu-user=$QVER"
        fetch_debs "$QDIR" "qemu-user=$QVER"
        NAMES=(qemu-aarch64 qemu-x86_64)
    else
        # Fallback: bookworm's QEMU 7.2, static binaries in qemu-user-static as *-static.
        # 7.2 segfaults on `import onnxruntime` unless it sees an ARM /proc/cpuinfo and
        # its -cpu max gets SME wrong: see README ("QEMU 7.2 fallback").
        QVER="$(candidate qemu-user-static)"
        say "WARNING: no QEMU >= 9 in apt; falling back to qemu-user-static=$QVER (see README)"
        fetch_debs "$QDIR" "qemu-user-static=$QVER"
        NAMES=(qemu-aarch64-static qemu-x86_64-static)
    fi
    rm -rf "$QDIR/x"; dpkg-deb -x "$QDIR"/*.deb "$QDIR/x"
    install -m 0755 "$QDIR/x/usr/bin/${NAMES[0]}" "$BIN/qemu-aarch64"
    install -m 0755 "$QDIR/x/usr/bin/${NAMES[1]}" "$BIN/qemu-x86_64"
    rm -rf "$QDIR"   # 62 MB .deb, all other targets: only the two binaries are kept
    say "qemu $(qemu_version) -> $BIN"
else
    say "qemu $(qemu_version) already in $BIN"
fi
QMAJOR_NOW="$(qemu_version)"; QMAJOR_NOW="${QMAJOR_NOW%%.*}"

# ---- 3. arm64 Python 3.11 sysroot ---------------------------------------------
if [[ ! -x "$SYSROOT/usr/bin/python$PYVER" || -z "$(sysroot_pyversion)" ]]; then
    DDIR="$CACHE/debs/arm64"; rm -rf "$DDIR"; mkdir -p "$DDIR"
    say "downloading ${#ARM64_DEBS[@]} arm64 packages"
    fetch_debs "$DDIR" "${ARM64_DEBS[@]/%/:arm64}"
    got=("$DDIR"/*.deb); n=${#got[@]}
    [[ $n -eq ${#ARM64_DEBS[@]} ]] || { echo "emulators.sh: got $n of ${#ARM64_DEBS[@]} arm64 packages" >&2; exit 1; }
    rm -rf "$SYSROOT"; mkdir -p "$SYSROOT"
    for deb in "$DDIR"/*.deb; do dpkg-deb -x "$deb" "$SYSROOT"; done
    # Drop what no script needs (docs, man pages, locales): ~30 MB.
    rm -rf "$SYSROOT/usr/share/doc" "$SYSROOT/usr/share/man" "$SYSROOT/usr/share/locale" \
           "$SYSROOT/usr/share/lintian" "$SYSROOT/usr/share/info"
    mkdir -p "$SYSROOT/var/lib/emu"
    dpkg-deb -f "$DDIR"/python3.11-minimal_*.deb Version > "$SYSROOT/var/lib/emu/python3.11-minimal.version"
    rm -rf "$DDIR"   # the sysroot is the cache; the .debs are 25 MB more
    say "arm64 sysroot: python $(sysroot_pyversion)"
else
    say "arm64 sysroot already there: python $(sysroot_pyversion)"
fi

# ---- 4. aarch64 wheels: onnxruntime + numpy (nothing else is needed to import) --
# onnxruntime's Requires-Dist (flatbuffers, packaging, protobuf) are not imported
# by `import onnxruntime` nor by InferenceSession.run, so they are left out.
if [[ "$(site_version onnxruntime)" != "$ORT_VERSION" || "$(site_version numpy)" != "$NUMPY_VERSION" ]]; then
    PIPPLAT=(--only-binary=:all: --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64
             --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}")
    say "pip download onnxruntime==$ORT_VERSION numpy==$NUMPY_VERSION (aarch64)"
    "$HOST_PY" -m pip download -q --no-deps "${PIPPLAT[@]}" -d "$CACHE/wheels" \
        "onnxruntime==$ORT_VERSION" "numpy==$NUMPY_VERSION"
    rm -rf "$SITE"; mkdir -p "$SITE"
    say "pip install --target $SITE"
    "$HOST_PY" -m pip install -q --no-deps --no-index --no-compile "${PIPPLAT[@]}" --target "$SITE" \
        "$CACHE"/wheels/onnxruntime-"$ORT_VERSION"-*.whl "$CACHE"/wheels/numpy-"$NUMPY_VERSION"-*.whl
    rm -rf "${SITE:?}/bin"   # console scripts with a host shebang
else
    say "aarch64 wheels already in $SITE"
fi

# ---- 5. bytecode: the sysroot's stdlib ships no .pyc (Debian compiles them in its
# postinst, which dpkg-deb -x skips), so every emulated start would compile the
# stdlib, numpy and onnxruntime anew under emulation (~17 s instead of ~5 s).
# .pyc of one CPython minor version are portable, so the host's 3.11 compiles them.
if "$HOST_PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    PYC=("$HOST_PY")
else
    PYC=("$BIN/qemu-aarch64" -cpu cortex-a53 -L "$SYSROOT" "$SYSROOT/usr/bin/python$PYVER")
fi
say "compileall (stdlib + site)"
"${PYC[@]}" -m compileall -q -j0 -x '/(tests?|idlelib|lib2to3|tkinter|turtledemo|ensurepip)/' \
    "$SYSROOT/usr/lib/python$PYVER" "$SITE" >/dev/null

# ---- 6. runner scripts; fake ARM cpuinfo files (only used with QEMU < 9) -------
# QEMU >= 9 makes up /proc/cpuinfo for the emulated model itself. 7.2 shows the
# host's x86 one, on which onnxruntime's cpuinfo segfaults; an ARM one must be
# bind-mounted instead, and it must match -cpu: cpuinfo turns on sdot from the
# "CPU part" (a Neoverse-N1 file on a cortex-a53 ends in SIGILL).
fake_cpuinfo() {  # NAME IMPLEMENTER VARIANT PART FEATURES
    printf 'processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: %s\nCPU implementer\t: %s\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: 0\n\n' \
        "$5" "$2" "$3" "$4" > "$EMU/arm64/cpuinfo-$1"
}
V80='fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid'
V82="$V80 atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp"
fake_cpuinfo cortex-a53 0x41 0x0 0xd03 "$V80"
fake_cpuinfo cortex-a72 0x41 0x0 0xd08 "$V80"
fake_cpuinfo cortex-a76 0x41 0x4 0xd0b "$V82"
fake_cpuinfo neoverse-n1 0x41 0x3 0xd0c "$V82"
fake_cpuinfo max 0x41 0x3 0xd0c "$V82"    # N1 MIDR: an implementer-0 (QEMU max) file segfaults cpuinfo
cat > "$BIN/py-aarch64" <<EOF
#!/usr/bin/env bash
# py-aarch64 CPU script.py [args]: the arm64 python of .emu under qemu-aarch64 -cpu CPU
# (generated by stages/profiles/emulators.sh). CPU as for qemu -cpu, e.g. cortex-a53.
set -euo pipefail
cpu="\$1"; shift
E="$EMU"
export PYTHONPATH="\$E/arm64/site" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1
unset PYTHONHOME
cmd=("\$E/bin/qemu-aarch64" -cpu "\$cpu" -L "\$E/arm64/sysroot" "\$E/arm64/sysroot/usr/bin/python$PYVER" -s "\$@")
if [[ $QMAJOR_NOW -lt 9 ]]; then
    # QEMU 7.2: an ARM /proc/cpuinfo matching the model, in a private mount namespace.
    if [[ "\$cpu" == max* && "\$cpu" != *sme=off* ]]; then
        echo "QEMU 7.2 emulates SME wrongly (garbage int8, no error): use -cpu max,sme=off" >&2; exit 2
    fi
    f="\$E/arm64/cpuinfo-\${cpu%%,*}"
    [[ -f "\$f" ]] || { echo "no fake cpuinfo for \$cpu under QEMU 7.2 (have: \$(ls "\$E"/arm64/ | sed -n 's/^cpuinfo-//p' | tr '\n' ' '))" >&2; exit 2; }
    exec unshare -m bash -c 'mount --bind "\$0" /proc/cpuinfo && exec "\$@"' "\$f" "\${cmd[@]}"
fi
exec "\${cmd[@]}"
EOF
cat > "$BIN/py-x86_64" <<EOF
#!/usr/bin/env bash
# py-x86_64 CPU script.py [args]: the project's x86-64 python under qemu-x86_64 -cpu CPU
# (generated by stages/profiles/emulators.sh). QEMU's TCG has no AVX-512/VNNI/AMX.
set -euo pipefail
cpu="\$1"; shift
export PYTHONDONTWRITEBYTECODE=1
exec "$EMU/bin/qemu-x86_64" -cpu "\$cpu" "\${EMU_X86_PYTHON:-$ROOT/.venv/bin/python}" "\$@"
EOF
chmod +x "$BIN/py-aarch64" "$BIN/py-x86_64"

# ---- 7. smoke test and stamp -----------------------------------------------
SMOKE='import numpy as np, onnxruntime as ort, platform; print(platform.machine(), np.__version__, ort.__version__, ort.get_available_providers()[0])'
say "smoke: aarch64 cortex-a53:   $("$BIN/py-aarch64" cortex-a53 -c "$SMOKE")"
if [[ -x "$ROOT/.venv/bin/python" ]] && "$ROOT/.venv/bin/python" -c 'import onnxruntime' 2>/dev/null; then
    say "smoke: x86_64 Haswell-noTSX: $("$BIN/py-x86_64" Haswell-noTSX -c "$SMOKE")"
fi
expected_stamp > "$EMU/READY"
say "READY: $(tr '\n' ' ' < "$EMU/READY")"
say "size of $EMU: $(du -sm "$EMU" | cut -f1) MB; took $((SECONDS - T0)) s"
