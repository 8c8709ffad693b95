#!/usr/bin/env bash
# Checks every Caddyfile the documentation shows, with a Caddy built with
# the module (default ./caddy):
#
#   - every ```caddyfile block of README.md and docs/*.md, Caddyfile.example
#     and docs/deploy/Caddyfile must be formatted (`caddy fmt` changes
#     nothing) and must validate (`caddy validate`) with no WARN and no
#     error. A ```caddyfile block is a complete config; a syntax summary is
#     a ```text block. A client_key's {file.*} gets a throwaway P-256 key.
#   - a fenced block right after a line `<!-- file: PATH -->` must be PATH's
#     content, byte for byte (docs/deploy.md shows the deployment files).
#
# Validation sends nothing anywhere: `caddy validate` never warms up a token
# source, the token URL that takes a variable points at a closed loopback
# port, and a proxy on that port is set for any other request. The
# variables the examples read are set below. Absolute paths under /etc,
# /run, /var, /srv and /mnt are moved into a scratch folder that holds the
# files the examples read (secrets, a throwaway CA and client certificate),
# so nothing of the host is read or written; a credentials_dir is an empty
# folder there.
#
# Failures name the file and the line of the block, and all are reported.
#
#   .ci/validate-docs.sh [path/to/caddy]
set -euo pipefail
cd "$(dirname "$0")/.."
caddy=$(realpath "${1:-./caddy}")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
root=$scratch/root
failures=0

fail() {
	echo "FAIL $*" >&2
	failures=$((failures + 1))
}

# extract writes each fenced block of the Markdown file $1 to
# $scratch/blocks/<n>, and lists "<n> <info> <file>:<line> <marked file>"
# in $scratch/blocks.list (line: the opening fence; marked file: the PATH of
# a `<!-- file: PATH -->` line right before it, or -).
mkdir -p "$scratch/blocks"
: >"$scratch/blocks.list"
n=0
extract() {
	n=$(awk -v src="$1" -v dir="$scratch/blocks" -v n="$n" -v list="$scratch/blocks.list" '
		!inb && /^```/ {
			inb = 1; n++; info = substr($0, 4); gsub(/[ \t]/, "", info)
			if (info == "") info = "-"
			out = dir "/" n; printf "" > out
			printf "%d %s %s:%d %s\n", n, info, src, NR, (marked != "" ? marked : "-") >> list
			marked = ""; next
		}
		inb && /^```[ \t]*$/ { inb = 0; close(out); next }
		inb { print > out; next }
		/^<!-- file: [^ ]+ -->$/ { marked = $3; next }
		{ marked = "" }
		END { print n }' "$1")
}
for f in README.md docs/*.md; do
	extract "$f"
done

# The Caddyfiles to check: "<file> <where>".
: >"$scratch/caddyfiles"
while read -r i info where marked; do
	case "$info" in
	caddyfile) echo "$scratch/blocks/$i $where" >>"$scratch/caddyfiles" ;;
	[Cc]addy*) fail "$where: a \`\`\`$info block: write \`\`\`caddyfile for a complete config, \`\`\`text for a syntax summary" ;;
	esac
	if [ "$marked" != - ] && ! cmp -s "$scratch/blocks/$i" "$marked"; then
		fail "$where: this block must be $marked's content:"
		diff "$marked" "$scratch/blocks/$i" >&2 || true
	fi
done <"$scratch/blocks.list"
for f in Caddyfile.example docs/deploy/Caddyfile; do
	echo "$PWD/$f $f:1" >>"$scratch/caddyfiles"
done

# What the examples read.
mkdir -p "$scratch/home" "$root/run/credentials/caddy.service"
if ! command -v openssl >/dev/null 2>&1; then
	echo "validate-docs: openssl is needed for the examples' TLS files (apt-get install openssl)" >&2
	exit 1
fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=validate-docs \
	-addext basicConstraints=critical,CA:TRUE -keyout "$scratch/key.pem" -out "$scratch/cert.pem" 2>/dev/null
echo ci-file-secret >"$root/run/credentials/caddy.service/desko_client_secret"
export HOME=$scratch/home XDG_DATA_HOME=$scratch/home XDG_CONFIG_HOME=$scratch/home
export DESKO_CLIENT_ID=ci-client DESKO_CLIENT_SECRET=ci-secret PARTNER_CLIENT_ID=ci-partner
export ACME_ID=ci-acme GLOBEX_ID=ci-globex
export DESKO_TOKEN_URL=http://127.0.0.1:9/v1.1/oauth/token
export CREDENTIALS_DIRECTORY=$root/run/credentials/caddy.service
export HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 NO_PROXY=

count=0
while read -r file where; do
	count=$((count + 1))
	if ! out=$("$caddy" fmt --diff "$file" 2>&1 </dev/null); then
		fail "$where: caddy fmt would change this Caddyfile:"
		echo "$out" | grep '^[-+]' >&2 || true
	fi
	# The host's paths moved into the scratch folder, and the files the
	# config reads created there.
	moved=$scratch/moved.caddyfile
	ROOT=$root perl -pe 's{(^|[\s.:])(/(?:etc|run|var|srv|mnt)/)}{$1$ENV{ROOT}$2}g' "$file" >"$moved"
	# (Only inside the scratch folder: caddy runs there, so a relative path
	# is too; any other path is left alone, and validation says so.)
	{
		{ grep -oE '\{file\.[^{}]+\}' "$moved" || true; } | sed -E 's/^\{file\.(.*)\}$/secret \1/'
		awk '$1 == "tls_ca" { print "cert", $2 } $1 == "tls_client_cert" { print "cert", $2; print "key", $3 }
			$1 == "client_key" && $2 ~ /^\{file\..*\}$/ { p = substr($2, 7, length($2) - 7); print "key", p }
			$1 == "credentials_dir" { print "dir", $2 }' "$moved"
	} | while read -r kind p; do
		case $p in
		"$scratch"/*) ;;
		/*) continue ;;
		*) p=$scratch/$p ;;
		esac
		mkdir -p "$(dirname "$p")"
		case $kind in
		secret) echo ci-file-value >"$p" ;;
		cert) cp "$scratch/cert.pem" "$p" ;;
		key) cp "$scratch/key.pem" "$p" ;;
		dir) mkdir -p "$p" ;;
		esac
	done
	if ! out=$(cd "$scratch" && "$caddy" validate --config "$moved" --adapter caddyfile 2>&1 </dev/null); then
		fail "$where: caddy validate failed:"
		echo "$out" | grep -v '"level":"info"' >&2
	elif grep -qE '"level":"(warn|error)"' <<<"$out"; then
		fail "$where: caddy validate warned:"
		grep -E '"level":"(warn|error)"' <<<"$out" >&2
	fi
done <"$scratch/caddyfiles"

if [ "$failures" -gt 0 ]; then
	echo "validate-docs: $failures problem(s) in $count Caddyfiles" >&2
	exit 1
fi
echo "validate-docs: $count Caddyfiles formatted and valid, no warnings"
