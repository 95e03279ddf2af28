#!/usr/bin/env bash
# Single-node Apache Kafka test broker (KRaft, broker+controller in one JVM, loopback only).
#
# The jars come from Maven (see pom.xml beside this script) and are cached outside the repo.
#
#   broker.sh fetch                  fetch the broker jars into the cache (idempotent)
#   broker.sh start DATA_DIR [PORT]  format DATA_DIR (first time only), start the broker in the
#                                    background, wait until it answers, then print exactly one
#                                    line "bootstrap=127.0.0.1:PORT" on stdout
#   broker.sh stop DATA_DIR          SIGTERM, up to 30 s, then SIGKILL (idempotent)
#   broker.sh status DATA_DIR        print "bootstrap=..." and exit 0 if running, else exit 1
#   broker.sh classpath              print the broker's java classpath (after fetch)
#
# A DATA_DIR that is already formatted is reused as it is (same data, same ports), so a test can
# stop the broker and start it again on the same port, e.g. for an outage test.
#
# Environment:
#   METERWATCH_KAFKA_CACHE  jar cache dir (default: $HOME/.cache/meterwatch/kafka-<version>)
#   PYTHON                  python for the readiness check and port picking (default: the repo's
#                           .venv/bin/python if present, else python3); aiokafka is used if it
#                           imports, otherwise a stdlib Kafka-protocol check
#   KAFKA_START_TIMEOUT     seconds to wait for the broker to answer (default 90)
#   KAFKA_HEAP_OPTS         JVM heap options (default "-Xms256m -Xmx1g")
#   KAFKA_JVM_OPTS          extra JVM options
#   KAFKA_EXTRA_CONFIG      extra server.properties lines, appended last (newline-separated)
#   KAFKA_SASL_SSL          1: a secured broker (read when DATA_DIR is formatted). Beside the
#                           PLAINTEXT listener, whose anonymous clients are super users (the test
#                           harness's own clients), a SASL_SSL listener (SCRAM-SHA-512, a
#                           certificate from a CA made for DATA_DIR) where ACLs apply: the users
#                           `meterwatch` and `producer` exist and are granted nothing. start then
#                           also prints "sasl_ssl=DATA_DIR/sasl_ssl.env", a file of key=value lines
#                           (bootstrap, plain_bootstrap, ca_file, mechanism, <user>_password).
#   JAVA                    java binary (default: $JAVA_HOME/bin/java or java)
#   MVN                     maven binary (default: mvn)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/pom.xml"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"

log() { printf 'broker.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

kafka_version() {
  sed -n 's:.*<kafka.version>\([^<]*\)</kafka.version>.*:\1:p' "$POM" | head -n1
}

KAFKA_VERSION="$(kafka_version)"
[[ -n "$KAFKA_VERSION" ]] || die "cannot read <kafka.version> from $POM"
CACHE_DIR="${METERWATCH_KAFKA_CACHE:-$HOME/.cache/meterwatch/kafka-$KAFKA_VERSION}"
LIB_DIR="$CACHE_DIR/libs"
STAMP="$CACHE_DIR/.fetched"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then PYTHON="$REPO_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
if [[ -z "${JAVA:-}" ]]; then
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then JAVA="$JAVA_HOME/bin/java"; else JAVA=java; fi
fi
MVN="${MVN:-mvn}"

pom_hash() { sha256sum "$POM" | cut -d' ' -f1; }

is_fetched() {
  [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$(pom_hash)" ]] && compgen -G "$LIB_DIR/*.jar" >/dev/null
}

cmd_fetch() {
  if is_fetched; then
    log "jars for Kafka $KAFKA_VERSION already in $LIB_DIR"
    return 0
  fi
  mkdir -p "$CACHE_DIR"
  # Serialize concurrent fetches into the same cache.
  exec 9>"$CACHE_DIR/.lock"
  flock 9
  if is_fetched; then flock -u 9; exec 9>&-; return 0; fi
  local tmp="$CACHE_DIR/libs.tmp.$$"
  rm -rf "$tmp"
  log "fetching Kafka $KAFKA_VERSION jars with Maven into $LIB_DIR"
  if ! "$MVN" -B -q -Dstyle.color=never -f "$POM" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1 |
      sed 's/\x1b\[[0-9;]*m//g; /^$/d' >&2; then
    rm -rf "$tmp"
    die "maven could not fetch the Kafka $KAFKA_VERSION jars"
  fi
  compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || { rm -rf "$tmp"; die "kafka_2.13 jar missing after fetch"; }
  rm -rf "$LIB_DIR"
  mv "$tmp" "$LIB_DIR"
  pom_hash >"$STAMP"
  flock -u 9
  exec 9>&-
  log "fetched $(find "$LIB_DIR" -name '*.jar' | wc -l) jars"
}

classpath() {
  local cp="" j
  for j in "$LIB_DIR"/*.jar; do cp+="${cp:+:}$j"; done
  printf '%s' "$cp"
}

cmd_classpath() { cmd_fetch; classpath; echo; }

# Print COUNT distinct free TCP ports on 127.0.0.1, none of the ports given after COUNT.
free_ports() {
  "$PYTHON" - "$@" <<'PY'
import socket, sys
count = int(sys.argv[1])
want = [int(a) for a in sys.argv[2:]]  # ports the caller already uses, to avoid
socks, ports = [], []
while len(ports) < count:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
    p = s.getsockname()[1]
    if p not in want:
        ports.append(p)
print(*ports)
PY
}

port_in_use() {
  "$PYTHON" - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)   # in use
sys.exit(1)
PY
}

random_cluster_id() {
  local id
  while :; do
    id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "$id" != -* ]] && { printf '%s' "$id"; return; }
  done
}

abs_dir() { mkdir -p "$1" && (cd "$1" && pwd); }

# pid from DATA_DIR/broker.pid if that process is alive and is our kafka.Kafka
running_pid() {
  local data="$1" pid
  [[ -f "$data/broker.pid" ]] || return 1
  pid="$(cat "$data/broker.pid" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' || return 1
  printf '%s' "$pid"
}

write_configs() {
  local data="$1" port="$2" cport="$3" sport="${4:-}"
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
  [[ -z "$sport" ]] || listeners+=",SASL_SSL://127.0.0.1:$sport"
  cat >"$data/server.properties" <<EOF
# Generated by .ci/kafka/broker.sh: single-node KRaft test broker, loopback only.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=$listeners
advertised.listeners=$listeners
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$data/kraft-logs

num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=2
log.retention.hours=168
EOF
  if [[ -n "$sport" ]]; then
    cat >>"$data/server.properties" <<EOF

# SASL_SSL listener with SCRAM-SHA-512, where ACLs apply. PLAINTEXT and CONTROLLER clients are
# anonymous super users: the broker itself and the test harness's own clients.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$data/tls/broker.p12
ssl.keystore.password=$TLS_STORE_PASSWORD
ssl.key.password=$TLS_STORE_PASSWORD
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
EOF
  fi
  if [[ -n "${KAFKA_EXTRA_CONFIG:-}" ]]; then
    printf '\n# KAFKA_EXTRA_CONFIG\n%s\n' "$KAFKA_EXTRA_CONFIG" >>"$data/server.properties"
  fi
  cat >"$data/log4j2.properties" <<'EOF'
# Generated by .ci/kafka/broker.sh: everything to stdout, which goes to DATA_DIR/broker.log.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = INFO
EOF
}

# Fixed credentials of a throw-away loopback test broker; they protect nothing.
TLS_STORE_PASSWORD=meterwatch-test-store
SASL_USERS=(meterwatch producer)
sasl_password() { printf '%s-test-password' "$1"; }

# A CA and a broker certificate for 127.0.0.1 and localhost, in DATA_DIR/tls.
make_tls() {
  local tls="$1/tls"
  mkdir -p "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=meterwatch test CA" \
    -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$tls/broker.key" -out "$tls/broker.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$tls/san.ext"
  openssl x509 -req -in "$tls/broker.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
    -days 30 -extfile "$tls/san.ext" -out "$tls/broker.pem" 2>/dev/null
  openssl pkcs12 -export -name broker -inkey "$tls/broker.key" -in "$tls/broker.pem" \
    -certfile "$tls/ca.pem" -passout "pass:$TLS_STORE_PASSWORD" -out "$tls/broker.p12"
}

write_sasl_env() {
  local data="$1" port="$2" sport="$3" user
  {
    printf 'bootstrap=127.0.0.1:%s\nplain_bootstrap=127.0.0.1:%s\n' "$sport" "$port"
    printf 'ca_file=%s\nmechanism=SCRAM-SHA-512\n' "$data/tls/ca.pem"
    for user in "${SASL_USERS[@]}"; do printf '%s_password=%s\n' "$user" "$(sasl_password "$user")"; done
  } >"$data/sasl_ssl.env"
}

# Wait until the broker answers a Metadata request (listing itself), or until the deadline.
# Exit codes: 0 ready, 1 timeout, 2 broker process died.
wait_ready() {
  local port="$1" pid="$2" timeout="$3"
  "$PYTHON" - "$port" "$pid" "$timeout" <<'PY'
import os, socket, struct, sys, time

port, pid, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout

def alive():
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:  # a zombie child counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

try:
    import asyncio, logging
    logging.disable(logging.CRITICAL)  # no "Unable connect" noise while the broker boots
    from aiokafka.client import AIOKafkaClient

    async def probe():
        client = AIOKafkaClient(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=5000,
                                client_id="meterwatch-broker-check")
        try:
            await asyncio.wait_for(client.bootstrap(), 8)
            return len(client.cluster.brokers()) > 0
        finally:
            await client.close()

    def check():
        return asyncio.run(probe())
except ImportError:
    def _req(sock, key, ver, corr, body):
        hdr = struct.pack(">hhih", key, ver, corr, 5) + b"check"
        sock.sendall(struct.pack(">i", len(hdr) + len(body)) + hdr + body)
        n = struct.unpack(">i", _read(sock, 4))[0]
        data = _read(sock, n)
        assert struct.unpack(">i", data[:4])[0] == corr
        return data[4:]

    def _read(sock, n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def check():  # stdlib: ApiVersions v0, then a non-flexible Metadata request
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            r = _req(s, 18, 0, 1, b"")
            err, n = struct.unpack(">hi", r[:6])
            if err:
                return False
            apis = {k: (lo, hi) for k, lo, hi in (struct.unpack(">hhh", r[6 + 6 * i:12 + 6 * i]) for i in range(n))}
            lo, hi = apis.get(3, (0, -1))
            ver = max(lo, 4)
            if ver > min(hi, 8):
                return True  # cannot speak a Metadata version; ApiVersions answered
            r = _req(s, 3, ver, 2, struct.pack(">i?", 0, False))
            return struct.unpack(">i", r[4:8])[0] > 0  # after throttle_time_ms: broker count

while True:
    if not alive():
        sys.exit(2)
    try:
        if check():
            sys.exit(0)
    except Exception:
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.5)
PY
}

cmd_start() {
  [[ $# -ge 1 && $# -le 2 ]] || die "usage: broker.sh start DATA_DIR [PORT]"
  local data port="" cport="" sport="" cluster_id pid want_port="${2:-}"
  data="$(abs_dir "$1")"
  [[ -z "$want_port" || "$want_port" =~ ^[0-9]+$ ]] || die "PORT must be a number: $want_port"

  if [[ -f "$data/broker.env" ]]; then
    port="$(sed -n 's/^PORT=//p' "$data/broker.env")"
    cport="$(sed -n 's/^CONTROLLER_PORT=//p' "$data/broker.env")"
    cluster_id="$(sed -n 's/^CLUSTER_ID=//p' "$data/broker.env")"
    sport="$(sed -n 's/^SASL_SSL_PORT=//p' "$data/broker.env")"
    [[ -n "$port" && -n "$cport" && -n "$cluster_id" ]] || die "$data/broker.env is incomplete"
    [[ -z "$want_port" || "$want_port" == "$port" ]] ||
      die "$data was formatted for port $port, not $want_port (use a fresh DATA_DIR)"
  fi

  if pid="$(running_pid "$data")"; then
    log "broker already running (pid $pid) on 127.0.0.1:$port"
    announce "$data" "$port" "$sport"
    return 0
  fi
  rm -f "$data/broker.pid"

  cmd_fetch
  local cp
  cp="$(classpath)"

  if [[ -f "$data/broker.env" && -f "$data/kraft-logs/meta.properties" ]]; then
    log "reusing formatted data in $data (port $port, controller port $cport)"
    port_in_use "$port" && die "port $port is in use by another process"
    port_in_use "$cport" && die "controller port $cport is in use by another process"
    write_configs "$data" "$port" "$cport" "$sport"
  else
    [[ ! -e "$data/kraft-logs" ]] || die "$data/kraft-logs exists but is not a formatted broker dir"
    if [[ -n "$want_port" ]]; then
      port="$want_port"
      port_in_use "$port" && die "port $port is in use"
      read -r cport sport < <(free_ports 2 "$port")
    else
      read -r port cport sport < <(free_ports 3)
    fi
    [[ "${KAFKA_SASL_SSL:-0}" == 1 ]] || sport=''
    cluster_id="$(random_cluster_id)"
    local scram=() user
    if [[ -n "$sport" ]]; then
      make_tls "$data"
      for user in "${SASL_USERS[@]}"; do
        scram+=(--add-scram "SCRAM-SHA-512=[name=$user,password=$(sasl_password "$user")]")
      done
      write_sasl_env "$data" "$port" "$sport"
    fi
    write_configs "$data" "$port" "$cport" "$sport"
    log "formatting $data (cluster id $cluster_id, port $port, controller port $cport${sport:+, SASL_SSL port $sport})"
    if ! "$JAVA" -Xmx256m -cp "$cp" -Dlog4j2.configurationFile="file:$data/log4j2.properties" \
        kafka.tools.StorageTool format --standalone --cluster-id "$cluster_id" \
        --config "$data/server.properties" "${scram[@]}" >"$data/format.log" 2>&1; then
      cat "$data/format.log" >&2
      die "kafka.tools.StorageTool format failed"
    fi
    printf 'PORT=%s\nCONTROLLER_PORT=%s\nSASL_SSL_PORT=%s\nCLUSTER_ID=%s\nKAFKA_VERSION=%s\n' \
      "$port" "$cport" "$sport" "$cluster_id" "$KAFKA_VERSION" >"$data/broker.env"
  fi

  local heap="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
  # shellcheck disable=SC2086
  setsid "$JAVA" $heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="file:$data/log4j2.properties" -Dkafka.logs.dir="$data" \
    ${KAFKA_JVM_OPTS:-} -cp "$cp" kafka.Kafka "$data/server.properties" \
    </dev/null >>"$data/broker.log" 2>&1 &
  pid=$!
  echo "$pid" >"$data/broker.pid"
  log "started kafka.Kafka $KAFKA_VERSION (pid $pid), log: $data/broker.log"

  local rc=0 timeout="${KAFKA_START_TIMEOUT:-90}"
  wait_ready "$port" "$pid" "$timeout" || rc=$?
  if [[ $rc -ne 0 ]]; then
    if [[ $rc -eq 2 ]]; then log "broker process exited during startup"; else log "broker did not answer within ${timeout}s"; fi
    log "last lines of $data/broker.log:"
    tail -n 60 "$data/broker.log" >&2 || true
    cmd_stop "$data" >/dev/null 2>&1 || true
    exit 1
  fi
  log "broker answers on 127.0.0.1:$port${sport:+ (SASL_SSL on $sport)}"
  announce "$data" "$port" "$sport"
}

announce() {
  echo "bootstrap=127.0.0.1:$2"
  [[ -z "$3" ]] || echo "sasl_ssl=$1/sasl_ssl.env"
}

cmd_stop() {
  [[ $# -eq 1 ]] || die "usage: broker.sh stop DATA_DIR"
  local data="$1" pid i
  [[ -d "$data" ]] || { log "no such DATA_DIR $data; nothing to stop"; return 0; }
  if ! pid="$(running_pid "$data")"; then
    rm -f "$data/broker.pid"
    log "broker not running"
    return 0
  fi
  log "stopping broker pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "broker still alive after 30 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$data/broker.pid"
  log "broker stopped"
}

cmd_status() {
  [[ $# -eq 1 ]] || die "usage: broker.sh status DATA_DIR"
  local data="$1" pid
  if pid="$(running_pid "$data")"; then
    log "running, pid $pid"
    echo "bootstrap=127.0.0.1:$(sed -n 's/^PORT=//p' "$data/broker.env")"
  else
    log "not running"
    return 1
  fi
}

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; }

case "${1:-}" in
  fetch) shift; cmd_fetch "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  classpath) shift; cmd_classpath "$@" ;;
  -h | --help | help) usage ;;
  *) usage; exit 2 ;;
esac
