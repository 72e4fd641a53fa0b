#!/usr/bin/env bash
# ops.sh: checks of the operations kit, run by `make check-ops` (and so by
# `make check`): the systemd unit (systemd-analyze verify and security),
# make install / uninstall into a scratch DESTDIR, the Prometheus alerting
# rules (promtool check and unit tests), the Grafana dashboard, the metric
# names both use, the warning when listening off loopback without tokens
# (in a network namespace of its own), and the man pages (mandoc -Tlint).
# A part whose tool is missing is skipped with a message.  Needs
# src/streambusd and src/streambus-cli built.  Last line: "N passed, N failed".
set -eu
cd "$(dirname "$0")/.."
top=$PWD

UNIT=systemd/streambusd.service
ALERTS=etc/streambus-alerts.yml
DASHBOARD=etc/grafana-dashboard.json
MAX_EXPOSURE=1.5

passed=0
failed=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/streambus-ops.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

ok()   { passed=$((passed + 1)); echo "ok   $*"; }
bad()  { failed=$((failed + 1)); echo "FAIL $*"; }
skip() { echo "skip $*"; }
have() { command -v "$1" >/dev/null 2>&1; }

# check DESCRIPTION COMMAND...: one test; the command's output is shown only
# when it fails.
check() {
	local desc=$1 out
	shift
	if out=$("$@" 2>&1); then
		ok "$desc"
	else
		bad "$desc"
		[ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/     | /'
	fi
}

# quiet COMMAND...: succeeds when the command does and prints nothing.
quiet() {
	local out
	out=$("$@" 2>&1) || { printf '%s\n' "$out"; return 1; }
	[ -z "$out" ] || { printf '%s\n' "$out"; return 1; }
}

# The unit's value of KEY (last assignment wins, as in systemd).
unit_value() { sed -n "s/^$1=//p" "$2" | tail -n 1; }

# ---- the unit -------------------------------------------------------------

# A copy of the unit whose programs are those of the tree at $1 (a DESTDIR
# with PREFIX=/usr), or the built ones when $1 is empty.
unit_copy() {
	if [ -n "$1" ]; then
		sed -e "s|/usr/bin/streambusd|$1/usr/bin/streambusd|g" \
		    -e "s|/etc/streambus/|$1/etc/streambus/|g" \
		    "$1/usr/lib/systemd/system/streambusd.service"
	else
		sed -e "s|/usr/local/bin/streambusd|$top/src/streambusd|g" \
		    -e "s|/etc/streambus/streambus.conf|$top/etc/streambus.conf|g" "$UNIT"
	fi
}

# exposure UNIT: prints the overall exposure score of systemd-analyze
# security, or its whole report when there is no score.
exposure() {
	local out score
	out=$(systemd-analyze security --offline=yes "$1" 2>&1) || true
	score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
	[ -n "$score" ] && echo "$score" || printf '%s\n' "$out"
}

# at_most SCORE: SCORE is a number no greater than MAX_EXPOSURE.
at_most() {
	awk -v s="$1" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s ~ /^[0-9.]+$/ && s + 0 <= m + 0) }' ||
	    { systemd-analyze security --offline=yes "$UNIT" 2>&1 | grep '✗'; return 1; }
}

unit_settings() {
	local f=$1 stop_ms stop_s
	[ "$(unit_value Type "$f")" = notify ] || { echo "Type is not notify"; return 1; }
	[ "$(unit_value WatchdogSec "$f")" = 10s ] || { echo "WatchdogSec is not 10s"; return 1; }
	grep -qx 'ExecReload=/bin/kill -HUP $MAINPID' "$f" || { echo "no ExecReload with SIGHUP"; return 1; }
	grep -qx 'ExecStart=/usr/local/bin/streambusd -c /etc/streambus/streambus.conf' "$f" ||
	    { echo "ExecStart differs"; return 1; }
	[ "$(unit_value Restart "$f")" = on-failure ] || { echo "Restart is not on-failure"; return 1; }
	# The graceful stop must end before systemd's SIGKILL.
	stop_ms=$(awk -F= '/^\[/ { s = $0 } s == "[server]" && $1 ~ /^shutdown_timeout_ms[ \t]*$/ {
	    sub(/;.*/, "", $2); gsub(/[ \t]/, "", $2); print $2 }' etc/streambus.conf)
	stop_s=$(unit_value TimeoutStopSec "$f")
	case $stop_s in *[!0-9s]* | "") echo "TimeoutStopSec=$stop_s: expected whole seconds"; return 1;; esac
	stop_s=${stop_s%s}
	[ $((stop_s * 1000)) -gt "${stop_ms:-5000}" ] ||
	    { echo "TimeoutStopSec=${stop_s}s is not above shutdown_timeout_ms=$stop_ms"; return 1; }
}

check "unit: Type, ExecStart, ExecReload, Restart, WatchdogSec, TimeoutStopSec" unit_settings "$UNIT"

if ! have systemd-analyze; then
	skip "unit: systemd-analyze not installed (package systemd)"
else
	unit_copy "" > "$tmp/streambusd.service"
	# Documentation= man pages are checked on the installed copy below.
	check "unit: systemd-analyze verify (ExecStart = the built binary)" \
	    quiet systemd-analyze verify --man=no "$tmp/streambusd.service"
	if systemd-analyze security --help 2>/dev/null | grep -q -- --offline; then
		score=$(exposure "$UNIT")
		check "unit: systemd-analyze security --offline=yes: exposure $score (at most $MAX_EXPOSURE)" \
		    at_most "$score"
	else
		skip "unit: this systemd-analyze has no security --offline"
	fi
fi

# ---- make install / uninstall ---------------------------------------------

mk() { make -s --no-print-directory -C "$top" "$@" >"$tmp/make.log" 2>&1 || { cat "$tmp/make.log"; return 1; }; }

# installed ROOT PREFIX: the tree holds everything `make install` puts.
installed() {
	local root=$1 prefix=$2 f s
	for f in streambusd streambus-cli; do
		[ -f "$root$prefix/bin/$f" ] && [ -x "$root$prefix/bin/$f" ] ||
		    { echo "$prefix/bin/$f: missing or not executable"; return 1; }
	done
	[ -f "$root/etc/streambus/streambus.conf" ] || { echo "/etc/streambus/streambus.conf missing"; return 1; }
	f=$root$prefix/lib/systemd/system/streambusd.service
	[ -f "$f" ] || { echo "$prefix/lib/systemd/system/streambusd.service missing"; return 1; }
	grep -qx "ExecStart=$prefix/bin/streambusd -c /etc/streambus/streambus.conf" "$f" ||
	    { echo "unit: ExecStart not rewritten for $prefix"; grep '^ExecStart' "$f"; return 1; }
	for f in man/*.[1-8]; do
		s=${f##*.}
		cmp -s "$f" "$root$prefix/share/man/man$s/${f##*/}" ||
		    { echo "$prefix/share/man/man$s/${f##*/} missing or different"; return 1; }
	done
	for f in "$ALERTS" "$DASHBOARD"; do
		cmp -s "$f" "$root$prefix/share/streambus/${f##*/}" ||
		    { echo "$prefix/share/streambus/${f##*/} missing or different"; return 1; }
	done
}

# only_files ROOT [FILE...]: exactly these regular files remain under ROOT.
only_files() {
	local root=$1 left want
	shift
	left=$(cd "$root" && find . -type f -o -type l | sed 's|^\./|/|' | sort)
	want=$(for f in "$@"; do echo "$f"; done | sort)
	[ "$left" = "$want" ] || { echo "left under DESTDIR:"; echo "${left:-(nothing)}"; return 1; }
}

config_runs() {
	local out
	out=$("$1/usr/bin/streambusd" -t -c "$1/etc/streambus/streambus.conf" 2>&1) || true
	[ "$out" = ok ] || { echo "streambusd -t: $out"; return 1; }
}

root=$tmp/root
conf=$root/etc/streambus/streambus.conf
check "install: make install DESTDIR PREFIX=/usr" mk install DESTDIR="$root" PREFIX=/usr
check "install: binaries, config, unit, man pages, alerts, dashboard" installed "$root" /usr
check "install: the installed streambusd accepts the installed config" config_runs "$root"
check "install: the config is the shipped one, mode 0644" \
    eval 'cmp etc/streambus.conf "$conf" && [ "$(stat -c %a "$conf")" = 644 ]'

if have systemd-analyze; then
	unit_copy "$root" > "$tmp/installed.service"
	if have man; then
		check "install: systemd-analyze verify of the installed unit and its man: pages" \
		    quiet env MANPATH="$root/usr/share/man" systemd-analyze verify "$tmp/installed.service"
	else
		check "install: systemd-analyze verify of the installed unit (no man(1): pages unchecked)" \
		    quiet systemd-analyze verify --man=no "$tmp/installed.service"
	fi
fi

echo "; changed by the administrator" >> "$conf"
cp "$conf" "$tmp/changed.conf"
check "install: again over a changed config" mk install DESTDIR="$root" PREFIX=/usr
check "install: the changed config is not overwritten" cmp "$tmp/changed.conf" "$conf"
check "install: everything else is in place again" installed "$root" /usr

check "uninstall: make uninstall DESTDIR PREFIX=/usr" mk uninstall DESTDIR="$root" PREFIX=/usr
check "uninstall: everything gone but the changed config" \
    only_files "$root" /etc/streambus/streambus.conf
check "uninstall: the changed config is kept as it was" cmp "$tmp/changed.conf" "$conf"
cp etc/streambus.conf "$conf"
check "uninstall: again, with the config unchanged" mk uninstall DESTDIR="$root" PREFIX=/usr
check "uninstall: nothing left, unchanged config included" only_files "$root"

root=$tmp/root-local
check "install: default PREFIX (/usr/local)" mk install DESTDIR="$root"
check "install: the /usr/local tree" installed "$root" /usr/local
check "uninstall: default PREFIX leaves nothing" \
    eval 'mk uninstall DESTDIR="$root" && only_files "$root"'

# ---- alerting rules and dashboard -----------------------------------------

if have promtool; then
	check "alerts: promtool check rules $ALERTS" promtool check rules "$ALERTS"
	check "alerts: promtool test rules tests/ops-alerts.test.yml" \
	    promtool test rules tests/ops-alerts.test.yml
else
	skip "alerts: promtool not installed (package prometheus)"
fi

dashboard_jq() {
	jq -e '
	  (.schemaVersion >= 36) and (.title | length > 0) and (.uid | length > 0)
	  and ([.templating.list[] | select(.type == "datasource" and .query == "prometheus")] | length == 1)
	  and ([.panels[].id] | length == (unique | length))
	  and all(.panels[]; .gridPos.x + .gridPos.w <= 24 and .gridPos.h > 0)
	  and all(.panels[] | select(.type != "row"); (.targets | length > 0)
	      and all(.targets[]; (.expr | length > 0) and .datasource.uid == "${datasource}"))
	  and ([.panels[] | select(.type == "heatmap")] | length >= 2)
	' "$DASHBOARD" >/dev/null
}

if have jq; then
	check "dashboard: $DASHBOARD is a Grafana dashboard (jq)" dashboard_jq
elif have python3; then
	check "dashboard: $DASHBOARD is JSON (python3 -m json.tool)" \
	    eval 'python3 -m json.tool "$DASHBOARD" >/dev/null'
else
	skip "dashboard: neither jq nor python3 installed"
fi

# Every metric the rules and the dashboard query is one streambusd exports
# (declared in include/metrics.h, or the process collector in src/metrics.c).
metric_names() {
	local m base missing=""
	for m in $(grep -ohE '\b(streams|streambus|process)_[a-z0-9_]+' "$ALERTS" "$DASHBOARD" |
	    sed 's/^[^:]*://' | sort -u); do
		base=$m
		case $m in *_bucket | *_sum | *_count) base=${m%_*};; esac
		grep -q "\"$base\"" include/metrics.h src/metrics.c || missing="$missing $m"
	done
	[ -z "$missing" ] || { echo "not exported by streambusd:$missing"; return 1; }
}
check "alerts, dashboard: every metric queried is exported" metric_names

# ---- listening off loopback ----------------------------------------------

# listen_log ADDR [CONFIG LINES]: the log of a daemon that listened on ADDR
# for a moment, inside a network namespace of its own (unshare -rn) whose
# loopback device also has 10.254.0.1, so that an address off loopback
# exists without touching the machine's network.  Redis is not needed.
listen_log() {
	local conf=$tmp/listen.conf
	printf '[server]\nlisten = %s\n%s\n[metrics]\nlisten = off\n' "$1" "${2:-}" >"$conf"
	timeout 20 unshare -rn sh -c '
		ip link set lo up && ip addr add 10.254.0.1/32 dev lo || exit 3
		: >"$3"		# now, not in the background child: the loop reads it
		"$1" -c "$2" 2>>"$3" &
		pid=$!
		i=0
		while [ $i -lt 50 ] && ! grep -q "listening on" "$3"; do
			sleep 0.1
			i=$((i + 1))
		done
		kill $pid
		wait $pid
		exit 0' sh "$top/src/streambusd" "$conf" "$tmp/listen.log" || return 1
	cat "$tmp/listen.log"
}
warns_off_loopback() {
	local log
	log=$(listen_log "$@") || { echo "could not run the daemon in a namespace"; return 1; }
	printf '%s\n' "$log" | grep -q "listening on $1 without auth_tokens" ||
	    { printf '%s\n' "$log"; return 1; }
}
silent_about_tokens() {
	local log
	log=$(listen_log "$@") || { echo "could not run the daemon in a namespace"; return 1; }
	printf '%s\n' "$log" | grep -q "listening on $1" || { printf '%s\n' "$log"; return 1; }
	! printf '%s\n' "$log" | grep -q "without auth_tokens" || { printf '%s\n' "$log"; return 1; }
}
if have unshare && have ip && timeout 5 unshare -rn ip link set lo up 2>/dev/null; then
	printf 'secret pub=* sub=*\n' >"$tmp/tokens"
	chmod 600 "$tmp/tokens"
	check "listen: a warning off loopback without auth_tokens" \
	    warns_off_loopback 10.254.0.1:7070
	check "listen: no warning on 127.0.0.1" silent_about_tokens 127.0.0.1:7070
	check "listen: no warning off loopback with auth_tokens" \
	    silent_about_tokens 10.254.0.1:7070 "auth_tokens = $tmp/tokens"
else
	skip "listen: no network namespace here (unshare -rn)"
fi

# ---- man pages ------------------------------------------------------------

if have mandoc; then
	check "man: mandoc -Tlint -W warning man/*" quiet mandoc -Tlint -W warning man/*
else
	skip "man: mandoc not installed"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
