# test/tools/scaleout-lib.sh - throwaway PL/Proxy set-ups (SPEC section 10),
# sourced by test/shell/60_proxy.t, test/tools/scaleout-demo and
# test/bench/proxy.
#
# Each partition and the proxy is its own PostgreSQL cluster (initdb once,
# then copies) on a free port of 127.0.0.1, as on separate servers: TCP
# connections from the proxy log in with a password (scram-sha-256 in
# pg_hba.conf, as a stock Debian server has it; the proxy's postmaster has
# no PGPASSWORD and no .pgpass, so only the USER MAPPING can supply it).
# The local socket (in the work folder) trusts, for the set-up itself.
#
#   so_init                     work folder, template cluster
#   so_cluster NAME [OPTS...]   start cluster NAME; sets SO_PORT[NAME]
#   so_psql NAME DB [psql args] psql as the superuser on NAME's socket
#   so_partition NAME DB K N [VERSION]
#                               database DB on NAME as partition K of N
#   so_proxy NAME DB PART...    proxy database DB on NAME, partitions
#                               given as NAME:DB in p0, p1, ... order
#   so_stop NAME / so_start NAME
#   so_cleanup                  stop everything, remove the work folder
#
# Roles on every cluster: shop_app (milestones_app), shop_support
# (milestones_support), shop_reader (milestones_reader), logins with
# password 'pw-<role>'; the superuser postgres has password 'pw-postgres'
# (the proxy's owner maps to the partitions' owner).

SO_BIN=${SO_BIN:-$(pg_config --bindir)}
declare -A SO_PORT
SO_NAMES=()
SO_DIR=

# so_run CMD...: run a server program as the postgres user (initdb and the
# server refuse to run as root).
so_run() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- env -u PGPASSWORD PGPASSFILE=/nonexistent "$@"
  else
    env -u PGPASSWORD PGPASSFILE=/nonexistent "$@"
  fi
}

# so_free_port: a TCP port nobody listens on, below the kernel's range of
# ephemeral ports (a client connection's local port there made a server's
# bind fail now and then).
so_free_port() {
  local p lo=32768 hi
  read -r lo _ < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || lo=32768
  hi=$(( lo - 1 )); [ "$hi" -gt 30000 ] || hi=30000
  for p in $(shuf -i 20000-$hi -n 200); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && [ ! -e "$SO_DIR/sock/.s.PGSQL.$p" ]; then
      case " ${SO_PORT[*]} " in *" $p "*) continue ;; esac
      echo "$p"
      return 0
    fi
  done
  return 1
}

so_init() {
  SO_DIR=$(mktemp -d /tmp/milestones-scaleout.XXXXXX)
  chmod 755 "$SO_DIR"
  mkdir -p "$SO_DIR/sock"
  [ "$(id -u)" -eq 0 ] && chown -R postgres: "$SO_DIR"
  so_run "$SO_BIN/initdb" -D "$SO_DIR/template" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >"$SO_DIR/initdb.log" 2>&1 || { cat "$SO_DIR/initdb.log"; return 1; }
}

# so_cluster NAME [postgresql.conf lines...]
so_cluster() {
  local name=$1 port
  shift
  port=$(so_free_port) || return 1
  so_run cp -a "$SO_DIR/template" "$SO_DIR/$name"
  {
    echo "port = $port"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$SO_DIR/sock'"
    echo "max_connections = 60"
    echo "shared_buffers = 32MB"
    echo "fsync = off"
    echo "logging_collector = off"
    if [ -n "${MILESTONES_DESTDIR:-}" ]; then   # make test's build (test/tools/run-tests)
      echo "extension_destdir = '$MILESTONES_DESTDIR'"
      echo "dynamic_library_path = '$MILESTONES_DESTDIR$(pg_config --pkglibdir):\$libdir'"
    fi
    local l
    for l in "$@"; do echo "$l"; done
  } | so_run tee -a "$SO_DIR/$name/postgresql.conf" >/dev/null
  so_run "$SO_BIN/pg_ctl" -D "$SO_DIR/$name" -l "$SO_DIR/$name.log" -w -t 60 start >/dev/null || { tail -20 "$SO_DIR/$name.log"; return 1; }
  SO_PORT[$name]=$port
  SO_NAMES+=("$name")
  so_psql "$name" postgres -q >/dev/null <<'SQL'
ALTER ROLE postgres PASSWORD 'pw-postgres';
CREATE ROLE milestones_app NOLOGIN;
CREATE ROLE milestones_support NOLOGIN;
CREATE ROLE milestones_reader NOLOGIN;
CREATE ROLE shop_app LOGIN PASSWORD 'pw-shop_app' IN ROLE milestones_app;
CREATE ROLE shop_support LOGIN PASSWORD 'pw-shop_support' IN ROLE milestones_support;
CREATE ROLE shop_reader LOGIN PASSWORD 'pw-shop_reader' IN ROLE milestones_reader;
SQL
}

so_stop()  { so_run "$SO_BIN/pg_ctl" -D "$SO_DIR/$1" -m fast -w stop >/dev/null; }
so_start() { so_run "$SO_BIN/pg_ctl" -D "$SO_DIR/$1" -l "$SO_DIR/$1.log" -w -t 60 start >/dev/null; }

# so_psql NAME DB [psql args...]: the superuser over NAME's local socket.
so_psql() {
  local name=$1 db=$2
  shift 2
  PGPASSWORD= psql -X -v ON_ERROR_STOP=1 -h "$SO_DIR/sock" -p "${SO_PORT[$name]}" -U postgres -d "$db" "$@"
}

# so_q NAME DB SQL: one query, unaligned tuples.
so_q() { so_psql "$1" "$2" -qAt -c "$3"; }

# so_partition NAME DB K N [VERSION]: the DBA's set-up of partition K of N.
so_partition() {
  local name=$1 db=$2 k=$3 n=$4 version=${5:-}
  so_psql "$name" postgres -q -c "CREATE DATABASE $db" >/dev/null || return 1
  if [ -n "$version" ]; then
    so_psql "$name" "$db" -q -c "CREATE EXTENSION milestones VERSION '$version'" >/dev/null
  else
    so_psql "$name" "$db" -q -c "CREATE EXTENSION milestones" -c "SELECT milestones.set_partition($k, $n)" >/dev/null
  fi
}

# so_connstr NAME DB: the partition's connect string as the proxy sees it.
so_connstr() { echo "host=127.0.0.1 port=${SO_PORT[$1]} dbname=$2"; }

# so_proxy NAME DB NAME:DB...: the DBA's set-up of the proxy database.
so_proxy() {
  local name=$1 db=$2 i=0 opts="" part
  shift 2
  for part in "$@"; do
    opts+="${opts:+, }p$i '$(so_connstr "${part%%:*}" "${part#*:}")'"
    i=$((i + 1))
  done
  so_psql "$name" postgres -q -c "CREATE DATABASE $db" >/dev/null || return 1
  so_psql "$name" "$db" -q >/dev/null <<SQL
SET client_min_messages = warning;
CREATE EXTENSION milestones_proxy CASCADE;
CREATE SERVER milestones_cluster FOREIGN DATA WRAPPER plproxy OPTIONS ($opts);
CREATE USER MAPPING FOR postgres SERVER milestones_cluster OPTIONS (user 'postgres', password 'pw-postgres');
CREATE USER MAPPING FOR shop_app SERVER milestones_cluster OPTIONS (user 'shop_app', password 'pw-shop_app');
CREATE USER MAPPING FOR shop_support SERVER milestones_cluster OPTIONS (user 'shop_support', password 'pw-shop_support');
CREATE USER MAPPING FOR shop_reader SERVER milestones_cluster OPTIONS (user 'shop_reader', password 'pw-shop_reader');
GRANT USAGE ON FOREIGN SERVER milestones_cluster TO shop_app, shop_support, shop_reader;
SQL
}

# so_as ROLE NAME DB [psql args...]: psql as a login role over TCP with its
# password, as an application connects.
so_as() {
  local role=$1 name=$2 db=$3
  shift 3
  PGPASSWORD="pw-$role" psql -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${SO_PORT[$name]}" -U "$role" -d "$db" "$@"
}

so_cleanup() {
  local n
  [ -n "$SO_DIR" ] || return 0
  for n in "${SO_NAMES[@]}"; do
    so_run "$SO_BIN/pg_ctl" -D "$SO_DIR/$n" -m immediate -w stop >/dev/null 2>&1 || true
  done
  rm -rf "$SO_DIR"
  SO_DIR=
}
