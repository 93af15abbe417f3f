#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft: controller and broker in one
# JVM) for the integration tests and benchmarks. No Docker: the jars come
# from Maven Central (pinned in scripts/kafka/pom.xml) and are cached in
# $RECSYS_KAFKA_CACHE (default ~/.cache/recsys) between runs.
#
#   broker.sh jars            download the jars once (mvn), print the dir
#   broker.sh start DIR       format DIR (first time), start on free loopback
#                             ports, wait until ready, print host:port
#   broker.sh stop DIR        stop (SIGTERM, SIGKILL after 30 s); keeps DIR
#   broker.sh addr DIR        print host:port of the broker in DIR
#
# A restarted broker (stop, then start on the same DIR) keeps its ports and
# its data.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")
CACHE=${RECSYS_KAFKA_CACHE:-$HOME/.cache/recsys}/kafka-$VERSION
JARS=$CACHE/jars

jars() {
  if [[ ! -f $CACHE/.complete ]]; then
    mkdir -p "$CACHE"
    rm -rf "$JARS"
    echo "kafka: downloading Apache Kafka $VERSION jars from Maven Central into $JARS" >&2
    mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$JARS" >&2
    touch "$CACHE/.complete"
  fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

start() {
  local dir=$1
  jars
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [[ -f $dir/pid ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    echo "kafka: already running in $dir" >&2; cat "$dir/addr"; return
  fi
  if [[ ! -f $dir/server.properties ]]; then
    local bport cport
    bport=$(free_port); cport=$(free_port)
    while [[ $cport == "$bport" ]]; do cport=$(free_port); done
    cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$bport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$bport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/logs
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.flush.interval.messages=9223372036854775807
PROPS
    cat > "$dir/log4j2.properties" <<'PROPS'
rootLogger.level=WARN
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
logger.server.name=kafka.server.KafkaRaftServer
logger.server.level=INFO
PROPS
    echo "127.0.0.1:$bport" > "$dir/addr"
    local cid
    # A cluster id that starts with "-" would be taken for an option by the
    # storage tool (1 in 64 of them; Kafka's own random-uuid avoids them too).
    cid=$(python3 -c 'import base64,uuid
while True:
    c = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not c.startswith("-"):
        print(c)
        break')
    java -Xmx256m -cp "$JARS/*" -Dlog4j2.configurationFile="$dir/log4j2.properties" \
      kafka.tools.StorageTool format -t "$cid" -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || { cat "$dir/format.log" >&2; exit 1; }
  fi
  local addr
  addr=$(cat "$dir/addr")
  # Readiness is read from what this run appends to the log: the log of an
  # earlier run on the same DIR holds the same line.
  local from=0
  [[ -f $dir/broker.log ]] && from=$(stat -c %s "$dir/broker.log")
  # A small heap and few threads: the test machine has 2 cores.
  nohup java -Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$JARS/*" \
    kafka.Kafka "$dir/server.properties" >>"$dir/broker.log" 2>&1 < /dev/null &
  echo $! > "$dir/pid"
  local deadline=$((SECONDS + 90))
  until tail -c +$((from + 1)) "$dir/broker.log" 2>/dev/null | grep -q "Kafka Server started"; do
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "kafka: broker exited during startup; log:" >&2; tail -50 "$dir/broker.log" >&2; exit 1
    fi
    if (( SECONDS > deadline )); then
      echo "kafka: broker not ready after 90 s; log:" >&2; tail -50 "$dir/broker.log" >&2; stop "$dir"; exit 1
    fi
    sleep 0.2
  done
  echo "$addr"
}

stop() {
  local dir=$1
  [[ -f $dir/pid ]] || return 0
  local pid
  pid=$(cat "$dir/pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "kafka: broker ignored SIGTERM for 30 s; killing" >&2
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
  fi
  rm -f "$dir/pid"
}

case ${1:-} in
  jars) jars; echo "$JARS" ;;
  start) start "${2:?usage: broker.sh start DIR}" ;;
  stop) stop "${2:?usage: broker.sh stop DIR}" ;;
  addr) cat "${2:?usage: broker.sh addr DIR}/addr" ;;
  *) echo "usage: broker.sh jars | start DIR | stop DIR | addr DIR" >&2; exit 2 ;;
esac
