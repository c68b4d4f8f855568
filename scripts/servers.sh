# Sourced by demo.sh and test.sh: make sure a PostgreSQL and a Redis answer.
#
# Uses the servers at DATABASE_URL / REDIS_URL (defaults 127.0.0.1:5432 and
# 127.0.0.1:6379) when they answer. Otherwise starts throwaway ones from the
# local binaries on free ports in a temp dir, says so, exports their URLs,
# and stops them (by PID) and removes the dir on exit.

: "${DATABASE_URL:=postgres://postgres@127.0.0.1:5432/postgres}"
: "${REDIS_URL:=redis://127.0.0.1:6379/0}"
export DATABASE_URL REDIS_URL

SC_TMP=""
SC_PG_DATA=""
SC_REDIS_PID=""
SC_CLUSTER_PIDS=()

sc_cleanup() {
    if [ -n "$SC_PG_DATA" ] && [ -f "$SC_PG_DATA/postmaster.pid" ]; then
        kill -INT "$(head -1 "$SC_PG_DATA/postmaster.pid")" 2>/dev/null || true
    fi
    if [ -n "$SC_REDIS_PID" ]; then
        kill "$SC_REDIS_PID" 2>/dev/null || true
    fi
    for pid in "${SC_CLUSTER_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    if [ -n "$SC_TMP" ]; then
        sleep 0.5
        rm -rf "$SC_TMP"
        echo "removed the throwaway servers"
    fi
}
trap sc_cleanup EXIT

# A port nothing listens on: random candidates, checked with bash's
# /dev/tcp (no python or netcat needed on a bare machine).
sc_free_port() {
    local port
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    echo "no free port found on 127.0.0.1" >&2
    return 1
}

sc_pg_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -n "$dir" ] || { echo "no PostgreSQL binaries under /usr/lib/postgresql: apt-get install postgresql" >&2; return 1; }
    echo "$dir"
}

sc_pg_answers() {
    psql "$DATABASE_URL" -Atqc 'SELECT 1' >/dev/null 2>&1
}

sc_redis_answers() {
    [ "$(redis-cli -u "$REDIS_URL" PING 2>/dev/null)" = "PONG" ]
}

sc_tmpdir() {
    if [ -z "$SC_TMP" ]; then
        SC_TMP=$(mktemp -d /tmp/smartcache-servers.XXXXXX)
        chmod 755 "$SC_TMP"
    fi
}

sc_start_pg() {
    local bin port run_as=()
    bin=$(sc_pg_bin) || return 1
    sc_tmpdir
    port=$(sc_free_port)
    SC_PG_DATA="$SC_TMP/pg"
    mkdir -p "$SC_PG_DATA"
    # PostgreSQL refuses to run as root.
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$SC_PG_DATA" 2>/dev/null || chown nobody "$SC_PG_DATA"
        run_as=(runuser -u "$(stat -c %U "$SC_PG_DATA")" --)
    fi
    "${run_as[@]}" "$bin/initdb" -D "$SC_PG_DATA" -U postgres --auth=trust -E UTF8 >/dev/null
    "${run_as[@]}" "$bin/pg_ctl" -D "$SC_PG_DATA" -l "$SC_PG_DATA/log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $SC_PG_DATA" start >/dev/null
    DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    echo "nothing answered at the default PostgreSQL URL: started a throwaway server on 127.0.0.1:$port"
}

sc_start_redis() {
    local port
    command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install redis-server" >&2; return 1; }
    sc_tmpdir
    port=$(sc_free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$SC_TMP" --daemonize no --logfile "$SC_TMP/redis.log" &
    SC_REDIS_PID=$!
    for _ in $(seq 50); do
        redis-cli -p "$port" PING >/dev/null 2>&1 && break
        sleep 0.1
    done
    REDIS_URL="redis://127.0.0.1:$port/0"
    echo "nothing answered at the default Redis URL: started a throwaway server on 127.0.0.1:$port"
}

sc_ensure_servers() {
    sc_pg_answers || sc_start_pg || return 1
    sc_redis_answers || sc_start_redis || return 1
    export DATABASE_URL REDIS_URL
}

# Starts a throwaway 3-master Redis Cluster on free ports and exports its
# seed URLs, comma-separated, as SC_CLUSTER_URL. Ports come from
# 20000-22767 so that neither they nor the bus ports (+10000) fall in the
# kernel's range for outgoing connections (32768 and up), where a port that
# looked free can be taken before the node binds it; a failed start is
# retried on other ports. Stopped by PID on exit like the other throwaway
# servers.
sc_start_cluster() {
    command -v redis-cli >/dev/null || { echo "redis-cli not found: apt-get install redis-tools" >&2; return 1; }
    sc_tmpdir
    local attempt
    for attempt in 1 2 3; do
        sc_try_cluster && return 0
        echo "starting the throwaway Redis Cluster failed (attempt $attempt of 3)" >&2
    done
    return 1
}

sc_port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

sc_try_cluster() {
    local ports=() pids=() port dir i ok
    while [ "${#ports[@]}" -lt 3 ]; do
        port=$((20000 + RANDOM % 2768))
        if sc_port_free "$port" && sc_port_free "$((port + 10000))" \
            && [[ " ${ports[*]} " != *" $port "* ]]; then
            ports+=("$port")
        fi
    done
    for port in "${ports[@]}"; do
        dir="$SC_TMP/cluster-$port"
        mkdir -p "$dir"
        redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
            --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 2000 \
            --save "" --appendonly no --dir "$dir" --daemonize no --logfile "$dir/redis.log" &
        pids+=($!)
        SC_CLUSTER_PIDS+=($!)
    done
    ok=1
    for port in "${ports[@]}"; do
        for i in $(seq 50); do
            redis-cli -p "$port" PING >/dev/null 2>&1 && break
            [ "$i" = 50 ] && ok=0
            sleep 0.1
        done
    done
    if [ "$ok" = 1 ] && redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" \
        --cluster-replicas 0 --cluster-yes >"$SC_TMP/cluster-create.log" 2>&1; then
        for port in "${ports[@]}"; do
            for i in $(seq 100); do
                redis-cli -p "$port" CLUSTER INFO 2>/dev/null | grep -q '^cluster_state:ok' && break
                [ "$i" = 100 ] && ok=0
                sleep 0.1
            done
        done
    else
        ok=0
    fi
    if [ "$ok" = 0 ]; then
        cat "$SC_TMP/cluster-create.log" 2>/dev/null >&2
        for port in "${ports[@]}"; do
            echo "--- cluster node $port, last log lines:" >&2
            tail -5 "$SC_TMP/cluster-$port/redis.log" >&2 2>/dev/null || true
        done
        kill "${pids[@]}" 2>/dev/null || true
        return 1
    fi
    SC_CLUSTER_URL=$(printf 'redis://127.0.0.1:%s,' "${ports[@]}")
    SC_CLUSTER_URL=${SC_CLUSTER_URL%,}
    export SC_CLUSTER_URL
    echo "started a throwaway Redis Cluster on 127.0.0.1:${ports[*]}"
}
