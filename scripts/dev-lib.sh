# Sourced by the bench scripts: start_dev DIR [silo dev flags...] starts
# `silo dev` in DIR/dev, in the background, waits for its API and sources
# its env; stop_dev stops it. The caller sets silo (the binary).

dev_pid=

start_dev() {
	local dir=$1
	shift
	rm -f "$dir/dev/env"
	"$silo" dev --dir "$dir/dev" --listen 127.0.0.1:0 --pg-listen 127.0.0.1:0 --log-level warn "$@" >"$dir/out" 2>"$dir/err" &
	dev_pid=$!
	for _ in $(seq 1 360); do [ -f "$dir/dev/env" ] && break; sleep 0.5; done
	if [ ! -f "$dir/dev/env" ]; then
		echo "silo dev did not start in 3 minutes:"; cat "$dir/out" "$dir/err"; stop_dev; exit 1
	fi
	# shellcheck disable=SC1091
	source "$dir/dev/env"
}

stop_dev() {
	if [ -n "$dev_pid" ]; then
		kill -INT "$dev_pid" 2>/dev/null || true
		wait "$dev_pid" || true
		dev_pid=
	fi
}
