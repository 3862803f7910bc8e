#!/usr/bin/env bash
# Make a PostgreSQL server available on 127.0.0.1 for the tests and print its URL on stdout (nothing else).
#
# Idempotent and fast when the server is already up. The server is a private cluster in .pg/ beside this
# script's repository (FLUIDMARGIN_PG_DIR overrides), listening on loopback only, so nothing system-wide
# is reconfigured: no system cluster is started or changed. Installs Debian's `postgresql` package when
# its binaries are missing (root: apt-get; otherwise it says what to install). Role and database `fm`,
# password `fm` over TCP (scram-sha-256), trust on the cluster's own socket directory.
# Port: FLUIDMARGIN_PG_PORT, else 54329 or the next free port (remembered in .pg/port).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGROOT=${FLUIDMARGIN_PG_DIR:-$ROOT/.pg}
WANT_PORT=${FLUIDMARGIN_PG_PORT:-54329}
USER_NAME=fm
PASSWORD=fm
DB=fm

say() { echo "postgres.sh: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1

find_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
        echo "$d"
        return
    fi
    local i
    i=$(command -v initdb || true)
    if [ -n "$i" ] && [ -x "$(dirname "$(readlink -f "$i")")/pg_ctl" ]; then
        dirname "$(readlink -f "$i")"
    fi
}

BINDIR=$(find_bindir)
if [ -z "$BINDIR" ]; then
    [ "$IS_ROOT" = 1 ] || die "PostgreSQL server binaries not found; install Debian's 'postgresql' package"
    say "installing PostgreSQL (apt-get install postgresql)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends postgresql >&2; then
        say "install failed; running apt-get update and trying again"
        apt-get update -q >&2 || true
        apt-get install -y -q --no-install-recommends postgresql >&2 || die "apt-get install postgresql failed"
    fi
    BINDIR=$(find_bindir)
    [ -n "$BINDIR" ] || die "postgresql installed but no initdb/pg_ctl found under /usr/lib/postgresql/*/bin"
fi

# initdb and pg_ctl refuse to run as root: as root, the cluster belongs to the `postgres` user.
if [ "$IS_ROOT" = 1 ]; then
    if ! id -u postgres >/dev/null 2>&1; then
        useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
    as_owner() { (cd / && runuser -u postgres -- "$@"); }
    owner_can_use() { as_owner test -w "$1" -a -x "$1"; }
else
    as_owner() { "$@"; }
    owner_can_use() { test -w "$1" -a -x "$1"; }
fi

mkdir -p "$PGROOT"
[ "$IS_ROOT" = 1 ] && chown postgres: "$PGROOT"
if ! owner_can_use "$PGROOT"; then
    # e.g. a checkout inside a directory the postgres user cannot enter: a private dir in /tmp instead
    alt=/tmp/fluidmargin-pg-$(printf '%s' "$ROOT" | sha1sum | cut -c1-12)
    say "the postgres user cannot use $PGROOT; using $alt"
    PGROOT=$alt
    mkdir -p "$PGROOT"
    [ "$IS_ROOT" = 1 ] && chown postgres: "$PGROOT"
    chmod 700 "$PGROOT"
fi

DATA=$PGROOT/data
SOCK=$PGROOT/sock
LOGFILE=$PGROOT/server.log
PORTFILE=$PGROOT/port

exec 9>"$PGROOT/lock"
flock 9 # one invocation at a time

url() { echo "postgresql://$USER_NAME:$PASSWORD@127.0.0.1:$1/$DB"; }

ready() { "$BINDIR/pg_isready" -q -h 127.0.0.1 -p "$1" >/dev/null 2>&1; }

# psql over TCP with the test role's password, as the tests connect
sql() { PGPASSWORD=$PASSWORD "$BINDIR/psql" -X -q -h 127.0.0.1 -p "$1" -U "$USER_NAME" -d "$2" -tAc "$3" 2>/dev/null; }

# a live (not zombie) postmaster for our data dir; a stale postmaster.pid (killed server) is removed
running() {
    local pid state
    [ -f "$DATA/postmaster.pid" ] || return 1
    pid=$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null || true)
    state=""
    if [ -n "$pid" ] && [ -r "/proc/$pid/stat" ]; then
        state=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null || true)
    fi
    if [ -z "$state" ] || [ "$state" = Z ] || [ "$state" = X ]; then
        say "removing the stale $DATA/postmaster.pid (pid ${pid:-?} is gone)"
        rm -f "$DATA/postmaster.pid" "$SOCK"/.s.PGSQL.*
        return 1
    fi
    as_owner "$BINDIR/pg_ctl" status -D "$DATA" >/dev/null 2>&1
}

# fast path: our cluster is up and has the database
if [ -f "$PORTFILE" ] && [ -f "$DATA/PG_VERSION" ] && running; then
    PORT=$(cat "$PORTFILE")
    if [ "$(sql "$PORT" "$DB" "SELECT 1")" = 1 ]; then
        url "$PORT"
        exit 0
    fi
fi

if [ ! -f "$DATA/PG_VERSION" ]; then
    say "creating a PostgreSQL cluster in $DATA"
    rm -rf "$DATA"
    pwfile=$(mktemp)
    printf '%s\n' "$PASSWORD" >"$pwfile"
    chmod 644 "$pwfile"
    as_owner "$BINDIR/initdb" -D "$DATA" -U "$USER_NAME" --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >&2 ||
        as_owner "$BINDIR/initdb" -D "$DATA" -U "$USER_NAME" --pwfile="$pwfile" --auth-local=trust \
            --auth-host=scram-sha-256 -E UTF8 --locale=C >&2 ||
        {
            rm -f "$pwfile"
            die "initdb failed"
        }
    rm -f "$pwfile"
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if running; then
    PORT=$(sed -n 4p "$DATA/postmaster.pid")
else
    PORT=$WANT_PORT
    if [ -f "$PORTFILE" ] && [ -z "${FLUIDMARGIN_PG_PORT:-}" ]; then
        PORT=$(cat "$PORTFILE")
    fi
    tries=0
    while port_busy "$PORT"; do
        [ -n "${FLUIDMARGIN_PG_PORT:-}" ] && die "port $PORT on 127.0.0.1 is taken (FLUIDMARGIN_PG_PORT)"
        tries=$((tries + 1))
        [ "$tries" -le 50 ] || die "no free port near $WANT_PORT on 127.0.0.1"
        PORT=$((PORT + 1))
    done
    mkdir -p "$SOCK"
    [ "$IS_ROOT" = 1 ] && chown postgres: "$SOCK"
    say "starting PostgreSQL on 127.0.0.1:$PORT (log: $LOGFILE)"
    # 9>&-: the server must not inherit the lock (it would hold it for its whole life)
    if ! as_owner "$BINDIR/pg_ctl" start -D "$DATA" -l "$LOGFILE" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $SOCK" >&2 9>&-; then
        tail -n 30 "$LOGFILE" >&2 || true
        die "the PostgreSQL server did not start"
    fi
fi
echo "$PORT" >"$PORTFILE"

for _ in $(seq 1 100); do
    ready "$PORT" && break
    sleep 0.1
done
ready "$PORT" || die "PostgreSQL on 127.0.0.1:$PORT does not accept connections (log: $LOGFILE)"
if [ "$(sql "$PORT" postgres "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    as_owner "$BINDIR/createdb" -h "$SOCK" -p "$PORT" -U "$USER_NAME" "$DB" >&2 || die "cannot create database $DB"
fi
[ "$(sql "$PORT" "$DB" "SELECT 1")" = 1 ] || die "cannot connect to $(url "$PORT") (log: $LOGFILE)"
url "$PORT"
