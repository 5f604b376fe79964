# shellcheck shell=bash
# scripts/lib.sh: shared shell functions for Sync Bridge's scripts (stack, test, demo, bench).
# Source it from bash (`source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"`); it sets no shell options.
#
# Variables set on sourcing:
#   SB_REPO_ROOT            the repository root (parent of scripts/)
#   SB_PG_VERSION           15
#   SB_TANSU_VERSION        0.6.0
#   SB_TANSU_ROOT           cargo install root of the broker (cache, outlives .stack)
#   SB_TANSU_BIN            the broker binary: $SB_TANSU_ROOT/bin/tansu
#
# Functions:
#   sb_log MSG...           prints "==> MSG" on stderr
#   sb_die MSG...           prints "error: MSG" on stderr and exits 1
#   sb_is_root              true when running as uid 0
#   sb_as_root CMD...       runs CMD as root (directly, or through sudo when not root)
#   sb_apt_install PKG...   apt-get update (once per script) && apt-get install -y PKG...
#   pg_bindir               prints the PostgreSQL 15 bindir, or fails (never trusts `pg_config`,
#                           which may belong to libpq-dev of another version)
#   ensure_postgres         installs postgresql-15 with apt when its server binary is absent
#                           (without Debian's auto-created "main" cluster); sets SB_PG_BINDIR
#   ensure_postgres_user    (root only) creates the `postgres` OS user when missing
#   pg_run CMD...           runs CMD as the `postgres` OS user when root (Postgres refuses root),
#                           directly otherwise
#   pg_run_as               prints "postgres" when root, "" otherwise (for SYNC_BRIDGE_PG_RUN_AS)
#   ensure_broker           builds the broker (cargo install tansu, once, ~15 minutes) when the
#                           cached binary is missing; sets SB_TANSU_BIN
#   ensure_build_tools      installs build-essential and pkg-config when cc, c++ or make is missing
#                           (C code is compiled by the broker's and the workspace's -sys crates)
#   free_port [EXCLUDED...] prints a free TCP port on 127.0.0.1 (asks the OS), not in EXCLUDED
#   port_open PORT          true when 127.0.0.1:PORT accepts a TCP connection
#   wait_port PORT SECS [PID] waits until PORT accepts connections; fails after SECS seconds or
#                           as soon as PID (if given) exits
#   sb_stack_dir            prints the stack dir: ${SYNC_BRIDGE_STACK_DIR:-$SB_REPO_ROOT/.stack}
#   sb_stack_env_file       prints the stack's env file path
#   sb_load_stack_env       sources the running stack's env file (fails when the stack is down)

SB_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SB_PG_VERSION=15
SB_TANSU_VERSION=0.6.0
SB_TANSU_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/sync-bridge/tansu-${SB_TANSU_VERSION}"
SB_TANSU_BIN="$SB_TANSU_ROOT/bin/tansu"

sb_log() { printf '==> %s\n' "$*" >&2; }
sb_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

sb_is_root() { [[ "$(id -u)" -eq 0 ]]; }

sb_as_root() {
    if sb_is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        sb_die "need root (or sudo) to run: $*"
    fi
}

SB_APT_UPDATED=0
sb_apt_install() {
    command -v apt-get >/dev/null 2>&1 || sb_die "apt-get not found; install these yourself: $*"
    sb_log "installing with apt: $*"
    if ((SB_APT_UPDATED == 0)); then
        sb_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        SB_APT_UPDATED=1
    fi
    sb_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

pg_bindir() {
    local d
    for d in "${SYNC_BRIDGE_PG_BINDIR:-}" "/usr/lib/postgresql/${SB_PG_VERSION}/bin"; do
        if [[ -n "$d" && -x "$d/postgres" && -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/psql" ]]; then
            # Refuse a bindir of another major version.
            if "$d/postgres" --version 2>/dev/null | grep -q " ${SB_PG_VERSION}\."; then
                printf '%s\n' "$d"
                return 0
            fi
        fi
    done
    return 1
}

ensure_postgres() {
    if ! SB_PG_BINDIR="$(pg_bindir)"; then
        sb_log "PostgreSQL ${SB_PG_VERSION} not found; installing postgresql-${SB_PG_VERSION}"
        # Only the binaries are wanted: stop Debian's package from creating (and starting) a
        # system-wide "main" cluster on port 5432.
        local conf=/etc/postgresql-common/createcluster.conf
        if [[ ! -f "$conf" ]]; then sb_apt_install postgresql-common; fi
        if [[ -f "$conf" ]] && ! grep -q '^create_main_cluster *= *false' "$conf"; then
            sb_as_root sed -i 's/^#* *create_main_cluster *=.*/create_main_cluster = false/' "$conf"
        fi
        sb_apt_install "postgresql-${SB_PG_VERSION}"
        SB_PG_BINDIR="$(pg_bindir)" || sb_die "postgresql-${SB_PG_VERSION} installed but its bindir has no server binaries"
    fi
    export SB_PG_BINDIR
    if sb_is_root; then ensure_postgres_user; fi
}

ensure_postgres_user() {
    if ! id -u postgres >/dev/null 2>&1; then
        sb_log "creating the postgres OS user"
        useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
}

pg_run_as() {
    if sb_is_root; then printf 'postgres'; fi
}

pg_run() {
    if sb_is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

ensure_broker() {
    if [[ -x "$SB_TANSU_BIN" ]]; then
        return 0
    fi
    command -v cargo >/dev/null 2>&1 || sb_die "cargo not found: install the Rust toolchain (https://rustup.rs) to build the broker"
    ensure_build_tools
    mkdir -p "$SB_TANSU_ROOT"
    # One build at a time, even when several scripts start at once.
    local lock_fd
    exec {lock_fd}>"$SB_TANSU_ROOT/.build.lock"
    flock "$lock_fd"
    if [[ ! -x "$SB_TANSU_BIN" ]]; then
        sb_log "building the Kafka-protocol broker (tansu ${SB_TANSU_VERSION}) once into $SB_TANSU_ROOT: about 15 minutes on 2 cores; later runs reuse it"
        cargo install --locked tansu --version "$SB_TANSU_VERSION" --features dynostore,libsql --root "$SB_TANSU_ROOT" ||
            {
                exec {lock_fd}>&-
                sb_die "building tansu failed (see the cargo output above)"
            }
    fi
    exec {lock_fd}>&-
    [[ -x "$SB_TANSU_BIN" ]] || sb_die "cargo install finished but $SB_TANSU_BIN is missing"
}

ensure_build_tools() {
    if ! command -v cc >/dev/null 2>&1 || ! command -v c++ >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
        sb_apt_install build-essential pkg-config
    fi
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {
    local port attempt excluded
    for ((attempt = 0; attempt < 50; attempt++)); do
        if command -v python3 >/dev/null 2>&1; then
            port="$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()')"
        else
            # No python: try random ports of the ephemeral range that nothing listens on.
            port=$((20000 + RANDOM % 30000))
            if command -v ss >/dev/null 2>&1 && ss -Htan "sport = :$port" | grep -q .; then continue; fi
            if port_open "$port"; then continue; fi
        fi
        for excluded in "$@"; do
            if [[ "$port" == "$excluded" ]]; then continue 2; fi
        done
        printf '%s\n' "$port"
        return 0
    done
    sb_die "could not find a free TCP port"
}

wait_port() {
    local port="$1" secs="$2" pid="${3:-}" deadline
    deadline=$((SECONDS + secs))
    while ! port_open "$port"; do
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.2
    done
}

sb_stack_dir() {
    printf '%s\n' "${SYNC_BRIDGE_STACK_DIR:-$SB_REPO_ROOT/.stack}"
}

sb_stack_env_file() {
    printf '%s/env\n' "$(sb_stack_dir)"
}

sb_load_stack_env() {
    local env_file
    env_file="$(sb_stack_env_file)"
    [[ -f "$env_file" ]] || sb_die "no stack env at $env_file: run scripts/stack up"
    # shellcheck source=/dev/null
    source "$env_file"
}
