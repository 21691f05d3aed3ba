#!/usr/bin/env bash
# Real PC/SC integration test: pcscd + Debian's vsmartcard-vpcd + `tessera serve`, driven by
# our PC/SC transport, pcsc-tools' scriptor and OpenSC's opensc-tool.
#
# Works on a fresh Debian machine as root: installs what is missing, starts its own pcscd
# (no systemd needed), builds `tessera --features pcsc`, and stops everything it started
# (by PID) on exit. Prints "pcsc: N passed, M failed" last; exits non-zero on any failure.
#
# Environment:
#   TESSERA_BIN       use this tessera binary instead of building one
#   CARGO_TARGET_DIR  honoured by the build
#   PCSC_BENCH_N      exchanges per benchmark (default 2000; 0 skips the benchmark)
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d /tmp/tessera-pcsc.XXXXXX)"
LOG="$WORK/log.txt"
PASS=0
FAIL=0
PIDS=()
PCSCD_PID=""
R0="Virtual PCD 00 00"
R1="Virtual PCD 00 01"

say() { printf '%s\n' "$*"; }
ok() { PASS=$((PASS + 1)); say "ok   $1"; }
bad() { FAIL=$((FAIL + 1)); say "FAIL $1 (log: $LOG)"; }
# check NAME CMD...: run CMD, pass when it exits 0. On failure, the check's own output (at
# most its last 40 lines) is printed too: CI keeps only what this script prints.
check() {
    local name="$1"; shift
    local from
    echo "=== $name: $*" >>"$LOG"
    from=$(($(wc -l <"$LOG") + 1))
    if "$@" >>"$LOG" 2>&1; then
        ok "$name"
    else
        bad "$name"
        tail -n "+$from" "$LOG" | tail -n 40 | sed 's/^/  | /'
    fi
}
finish() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    if [ -n "$PCSCD_PID" ]; then
        kill -TERM "$PCSCD_PID" 2>/dev/null && wait "$PCSCD_PID" 2>/dev/null
    fi
    # Keep the work directory (logs, images) only when something failed.
    if [ "$FAIL" -eq 0 ]; then rm -rf "$WORK"; fi
    say "pcsc: $PASS passed, $FAIL failed"
}
trap finish EXIT
trap 'exit 130' INT TERM

# ---- 1. packages -------------------------------------------------------------------------
need=()
for p in pcscd vsmartcard-vpcd pcsc-tools opensc libpcsclite-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -q && apt-get install -y -q "${need[@]}"; } >>"$LOG" 2>&1; then
        bad "apt-get install ${need[*]}"; exit 1
    fi
fi
say "vsmartcard-vpcd $(dpkg-query -W -f='${Version}' vsmartcard-vpcd), pcscd $(dpkg-query -W -f='${Version}' pcscd)"
# The Debian package registers the driver in /etc/reader.conf.d/vpcd (slot 0 on port
# 0x8C7B = 35963, slot 1 on 35964). pcscd reads that directory only when it starts.
if [ ! -f /etc/reader.conf.d/vpcd ]; then bad "vpcd reader config /etc/reader.conf.d/vpcd"; exit 1; fi

# ---- 2. build ----------------------------------------------------------------------------
if [ -n "${TESSERA_BIN:-}" ]; then
    T="$TESSERA_BIN"
else
    say "building tessera --features pcsc (release)"
    if ! (cd "$ROOT" && cargo build --release -p tessera-cli --features pcsc) >>"$LOG" 2>&1; then
        bad "cargo build --features pcsc"; exit 1
    fi
    T="${CARGO_TARGET_DIR:-$ROOT/target}/release/tessera"
fi

# ---- 3. pcscd ----------------------------------------------------------------------------
# Is a system pcscd here: a pcscd process, or its socket (systemd's pcscd.socket starts
# one on the first PC/SC call)? Read /proc and the socket path rather than asking PC/SC,
# which could socket-activate a system pcscd that this script did not start. Our own
# `pcscd -f` would refuse to start beside that socket anyway.
pcscd_running() {
    local c
    [ -S /run/pcscd/pcscd.comm ] && return 0
    for c in /proc/[0-9]*/comm; do
        [ "$(cat "$c" 2>/dev/null)" = pcscd ] && return 0
    done
    return 1
}
if pcscd_running; then
    # A pcscd started before vpcd was installed (e.g. by the package's systemd unit) has no
    # virtual reader. If systemd manages it, restart it through systemd so that it reads
    # /etc/reader.conf.d/vpcd; any other foreign pcscd is left alone and reported.
    if ! "$T" readers 2>/dev/null | grep -q "^$R0\$"; then
        if command -v systemctl >/dev/null && systemctl restart pcscd >>"$LOG" 2>&1; then
            say "restarted the system pcscd to load vpcd"
        else
            bad "a pcscd without the vpcd reader is running (not ours); stop it and rerun"; exit 1
        fi
    fi
    say "using the running pcscd"
else
    pcscd -f >>"$WORK/pcscd.log" 2>&1 &
    PCSCD_PID=$!
    sleep 0.3
    if ! kill -0 "$PCSCD_PID" 2>/dev/null; then
        PCSCD_PID=""
        bad "pcscd -f exited at once (see $WORK/pcscd.log)"; tail -n 20 "$WORK/pcscd.log"; exit 1
    fi
    say "started pcscd -f (pid $PCSCD_PID)"
fi
for _ in $(seq 1 50); do
    "$T" readers 2>/dev/null | grep -q "^$R0\$" && break
    sleep 0.2
done
check "tessera readers lists the vpcd readers" bash -c "'$T' readers | grep -qx '$R0' && '$T' readers --json | grep -q '$R1'"

# ---- 4. serve two cards --------------------------------------------------------------------
A="$WORK/a.card"
B="$WORK/b.card"
check "image new (contact)" "$T" image new --out "$A"
check "image new (contactless, own historical bytes)" "$T" image new --out "$B" --contactless --card-id 0102030405060708 --historical 8073C021C057597562694B6579
start_serve() {
    "$T" serve --card "$A" --card "$B" >>"$WORK/serve.log" 2>&1 &
    SERVE_PID=$!
    PIDS+=("$SERVE_PID")
}
# Wait until the card answers in a reader.
wait_card() {
    local r="$1"
    for _ in $(seq 1 100); do
        opensc-tool -r "$r" -a >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}
# Wait until pcscd has seen the card leave a reader (after serve stopped). Without this, the
# next wait_card can still see the previous card for a moment.
wait_gone() {
    local r="$1"
    for _ in $(seq 1 100); do
        opensc-tool -r "$r" -a >/dev/null 2>&1 || return 0
        sleep 0.1
    done
    return 1
}
# Wait until SELECT of an AID (colon-separated hex) succeeds in a reader. pcscd reports a
# new card (ATR) a moment before it accepts transactions on the new connection, so the
# ATR alone does not mean the card is ready.
wait_select() {
    local r="$1" aid="$2" len
    len=$(printf '%02X' $(( (${#aid} + 1) / 3 )))
    wait_card "$r" || return 1
    for _ in $(seq 1 100); do
        opensc-tool -r "$r" -s "00:A4:04:00:$len:$aid:00" 2>/dev/null | grep -Eq "SW1=0x(90|61)" && return 0
        sleep 0.1
    done
    return 1
}
# Stop serve and wait until both readers are empty.
stop_serve() {
    kill -TERM "$SERVE_PID" && wait "$SERVE_PID" || return 1
    wait_gone "$R0" && wait_gone "$R1"
}
DIAG_AID="F0:54:45:53:53:01:01"
PURSE_AID="F0:54:53:52:41:01:01"
SAM_AID="F0:54:53:52:41:03:01"
start_serve
check "card present in slot 0" wait_card "$R0"
check "card present in slot 1" wait_card "$R1"
ATR_B="$("$T" image info "$B" --json | sed -n 's/.*"atr":"\([0-9A-F]*\)".*/\1/p')"
check "slot 1 ATR is the PC/SC part 3 ATR of the ATS historical bytes" bash -c "opensc-tool -r '$R1' -a | tr -d ' :' | grep -qi '$ATR_B'"

# ---- 5. (a) our PC/SC transport ------------------------------------------------------------
cat >"$WORK/pcsc.apdu" <<'APDU'
# SELECT diag (FCI with Le), extended 4,000-byte response, 61xx chain, echo.
00A4040007F054455353010100 => 6F 09 84 07 F0544553530101 9000
80120FA0000FA0             => ..* 9000
8012025800                 => ..* 6100
8010000003 010203 00       => 010203 9000
reset                      => 3B ..*
8010000000                 => 6986
APDU
check "tessera script run --reader (extended 4000-byte response)" "$T" script run --reader "$R0" "$WORK/pcsc.apdu"
check "tessera script run --reader examples (apdutool, scriptor, plain)" \
    "$T" script run --reader "$R0" "$ROOT/test-vectors/scripts/examples/jcardsim.jcsh" "$ROOT/test-vectors/scripts/examples/scriptor.scriptor"
check "tessera script run --reader on slot 1" "$T" script run --reader "$R1" "$WORK/pcsc.apdu"
if [ -n "${TESSERA_BIN:-}" ]; then
    say "skip Rust PC/SC test (TESSERA_BIN set)"
else
    check "cargo test transport_pcsc (SCardReconnect cold/warm, chaining, GET RESPONSE)" \
        env TESSERA_PCSC_READER="$R0" bash -c "cd '$ROOT' && cargo test --release -p tessera-host --features pcsc --test transport_pcsc -- --nocapture"
fi

# ---- 6. (b) scriptor -----------------------------------------------------------------------
printf '00 A4 04 00 07 F0 54 45 53 53 01 01 00\n80 10 00 00 04 DE AD BE EF 00\n80 12 0F A0 00 0F A0\n' >"$WORK/in.scriptor"
scriptor_ok() {
    local out
    out="$(scriptor -r "$R0" "$WORK/in.scriptor" 2>&1)" || return 1
    printf '%s\n' "$out"
    printf '%s\n' "$out" | grep -q "DE AD BE EF 90 00" || return 1
    # The 4,000-byte response: 4,000 data bytes and 90 00 after the last command.
    local n
    n="$(printf '%s\n' "$out" | awk '/^> 80 12 0F A0/{f=1; next} f' | sed 's/:.*//; s/^< //' | tr ' ' '\n' | grep -cE '^[0-9A-F]{2}$')"
    echo "bytes in the 4000-byte answer (with SW): $n"
    [ "$n" -eq 4002 ] || return 1
    [ "$(printf '%s\n' "$out" | grep -c ': Normal processing')" -ge 3 ]
}
check "scriptor: select, echo, 4000-byte extended response" scriptor_ok

# ---- 7. (c) opensc-tool --------------------------------------------------------------------
opensc_ok() {
    local out
    out="$(opensc-tool -r "$R0" -s 00:A4:04:00:07:F0:54:45:53:53:01:01:00 -s 80:10:00:00:02:CA:FE:00 2>&1)" || return 1
    printf '%s\n' "$out"
    printf '%s\n' "$out" | grep -q "CA FE" && printf '%s\n' "$out" | grep -q "SW1=0x90, SW2=0x00"
}
check "opensc-tool -s: select and echo" opensc_ok

# ---- 8. state across a restart of serve ----------------------------------------------------
printf '00A4040007F0544553530101 => 61..\n8014090003 112233 => 9000\n' >"$WORK/write.apdu"
printf '00A4040007F0544553530101 => 61..\n8016090000 => 112233 9000\n' >"$WORK/read.apdu"
check "write record 09 (INS 14)" "$T" script run --reader "$R0" "$WORK/write.apdu"
restart_ok() {
    stop_serve || return 1
    start_serve
    wait_select "$R0" "$DIAG_AID"
}
check "restart tessera serve (SIGTERM, start again)" restart_ok
check "record 09 read back after the restart (INS 16)" "$T" script run --reader "$R0" "$WORK/read.apdu"

# ---- 8b. value flows through PC/SC: purse in slot 0, terminal SAM in slot 1 -------------
# The same flow commands as on image files, with --reader / --sam-reader; serve commits
# every change to the images, so the files show the result after serve stops.
SCHEME="$WORK/scheme"
PURSE="$WORK/purse.card"
TSAM="$WORK/terminal.sam"
check "scheme init" "$T" scheme init "$SCHEME"
check "card issue (purse, PIN 1234)" "$T" card issue --scheme "$SCHEME" --out "$PURSE" --pin 1234
check "sam issue --role terminal" "$T" sam issue --scheme "$SCHEME" --role terminal --out "$TSAM"
check "stop serve (diag cards leave both readers)" stop_serve
"$T" serve --card "$PURSE" --card "$TSAM" >>"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
PIDS+=("$SERVE_PID")
check "purse and SAM answer SELECT in slots 0 and 1" bash -c "$(declare -f wait_card wait_select); wait_select '$R0' '$PURSE_AID' && wait_select '$R1' '$SAM_AID'"
check "load 1000 into the purse through PC/SC (--reader)" "$T" load --scheme "$SCHEME" --reader "$R0" --amount 1000
check "pay 250 through PC/SC (--reader, --sam-reader)" "$T" pay --reader "$R0" --sam-reader "$R1" --amount 250
check "pay over the balance is refused through PC/SC" bash -c "! '$T' pay --reader '$R0' --sam-reader '$R1' --amount 5000"
check "purse show --reader: balance 750" bash -c "'$T' purse show --reader '$R0' --json | grep -q '\"balance\":750'"
# Settlement with the SAM in the reader: EXPORT / ACK JOURNAL through PC/SC, VERIFY JOURNAL
# and the 378-byte signed statement at the scheme's issuer SAM image.
check "settle the terminal SAM's journal through PC/SC (--sam-reader)" bash -c "'$T' sam journal --sam-reader '$R1' --settle --scheme '$SCHEME' --json | grep -q '\"purchases_total\":250'"
check "stop serve (purse and SAM leave both readers)" stop_serve
check "the purse image kept the balance after serve stopped" bash -c "'$T' purse show --card '$PURSE' --json | grep -q '\"balance\":750'"
check "the SAM image's journal is empty after the settlement" bash -c "'$T' sam show --sam '$TSAM' --json | grep -q '\"journal_count\":0'"
# The scheme's first terminal SAM is 00000002.
check "sam reconcile: the record matches the issuer SAM's signed statement" bash -c "'$T' sam reconcile --scheme '$SCHEME' --sam-id 00000002 --json | grep -q '\"purchases_total\":250'"
start_serve
check "diag cards served again for the benchmark" wait_select "$R0" "$DIAG_AID"

# ---- 9. benchmark --------------------------------------------------------------------------
N="${PCSC_BENCH_N:-2000}"
if [ "$N" -gt 0 ]; then
    check "bench: served card" bash -c "'$T' script bench --reader '$R0' -n $N | tee -a '$WORK/bench.txt'"
    check "stop serve (diag cards leave both readers)" stop_serve
    "$T" serve --echo-floor >>"$WORK/serve.log" 2>&1 &
    SERVE_PID=$!
    PIDS+=("$SERVE_PID")
    check "echo floor answers in slot 0" wait_select "$R0" "$DIAG_AID"
    check "bench: echo floor (pcscd+vpcd, no card)" bash -c "'$T' script bench --reader '$R0' -n $N | tee -a '$WORK/bench.txt'"
    sed -n 's/^\(.*\)$/  \1/p' "$WORK/bench.txt"
fi

[ "$FAIL" -eq 0 ]
