#!/bin/bash
#
# Fetch Debian 13 (trixie) mbedTLS 3.6 development files into a build-local
# prefix, so dnsfwd can be built and tested against mbedTLS 3 on a Debian 12
# machine whose system mbedTLS is 2.28.
#
# usage: tests/mbedtls3.sh [PREFIX]		(default build/mbedtls3)
#
# apt runs with its own sources, lists and cache in a temporary directory:
# the system's apt state (sources, lists, cache, dpkg database) is only read,
# never written, and nothing is installed.  The packages are unpacked with
# dpkg -x.  A second run finds the files in place and returns at once.
#
# Progress and errors go to stderr.  The only line on stdout, printed last,
# is the absolute library directory, for the Makefile to capture:
#	-I$P/usr/include -L$LIBDIR -Wl,-rpath,$LIBDIR
# Debian links with --as-needed and DT_RUNPATH, which the loader does not
# use for a library's own dependencies: if the binary does not itself call
# into libmbedx509, libmbedtls.so.21 then fails to find libmbedx509.so.7 at
# run time.  Adding -Wl,--disable-new-dtags (DT_RPATH) avoids that.
# Exit status 0 on success, 1 on any failure.

set -eu

PKGS=(libmbedtls-dev libmbedtls21 libmbedcrypto16 libmbedx509-7)
SUITE=trixie

die() {
	echo "mbedtls3.sh: error: $*" >&2
	exit 1
}
note() {
	echo "mbedtls3.sh: $*" >&2
}

prefix=${1:-build/mbedtls3}

multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null) ||
    multiarch=$(gcc -print-multiarch 2>/dev/null) || multiarch=
[ -n "$multiarch" ] ||
    die "cannot find the multiarch triplet (need dpkg-dev or gcc)"

mkdir -p "$prefix" || die "cannot create $prefix"
prefix=$(cd "$prefix" && pwd)
libdir=$prefix/usr/lib/$multiarch

installed() {
	[ -f "$prefix/usr/include/mbedtls/build_info.h" ] &&
	[ -e "$libdir/libmbedtls.so" ] &&
	[ -e "$libdir/libmbedx509.so" ] &&
	[ -e "$libdir/libmbedcrypto.so" ]
}

if installed; then
	echo "$libdir"
	exit 0
fi

command -v apt-get >/dev/null || die "apt-get not found: this needs Debian"
command -v dpkg >/dev/null || die "dpkg not found: this needs Debian"

T=$(mktemp -d "${TMPDIR:-/tmp}/mbedtls3.XXXXXX") ||
    die "cannot create a temporary directory"
trap 'rm -rf "$T"' EXIT
# When run as root, apt downloads as the unprivileged _apt user: it must be
# able to reach the directories below (otherwise apt warns and downloads
# as root, which is harmless).
chmod 755 "$T"
mkdir -p "$T/sources.list.d" "$T/preferences.d" "$T/lists/partial" \
    "$T/cache/archives/partial" "$T/debs" "$T/root"
chmod 777 "$T/debs"

#
# Sources: the system's main archive entry with the suite set to trixie.
# Security, updates and backports entries and deb-src are left out.
#
if [ -r /etc/apt/sources.list.d/debian.sources ]; then
	# deb822: the first enabled stanza with Types deb, a URI that is not
	# the security archive and a release suite (no "-updates" etc.).
	awk -v suite="$SUITE" '
	BEGIN { RS = ""; FS = "\n" }
	done { next }
	{
		types = uris = suites = ""; enabled = "yes"; n = 0
		for (i = 1; i <= NF; i++) {
			if ($i ~ /^#/)
				continue
			line[++n] = $i
			if (match($i, /^[A-Za-z-]+:/)) {
				key = tolower(substr($i, 1, RLENGTH - 1))
				val = substr($i, RLENGTH + 1)
				if (key == "types") types = val
				else if (key == "uris") uris = val
				else if (key == "suites") suites = val
				else if (key == "enabled") enabled = tolower(val)
			}
		}
		if (enabled ~ /no/ || types !~ /(^|[ \t])deb([ \t]|$)/ ||
		    uris ~ /security/ || uris == "")
			next
		base = 0
		m = split(suites, s, /[ \t]+/)
		for (i = 1; i <= m; i++)
			if (s[i] != "" && s[i] !~ /-/ && s[i] !~ /\//)
				base = 1
		if (!base)
			next
		skip = 0
		for (i = 1; i <= n; i++) {
			if (line[i] ~ /^[ \t]/) {	# continuation line
				if (!skip) print line[i]
				continue
			}
			skip = 0
			if (line[i] ~ /^[Tt]ypes:/)
				print "Types: deb"
			else if (line[i] ~ /^[Ss]uites:/) {
				print "Suites: " suite
				skip = 1
			} else
				print line[i]
		}
		done = 1
	}' /etc/apt/sources.list.d/debian.sources >"$T/sources.list.d/trixie.sources"
	from=/etc/apt/sources.list.d/debian.sources
	src=$T/sources.list.d/trixie.sources
elif [ -r /etc/apt/sources.list ]; then
	# One-line format: the first "deb" line (not the security archive,
	# a release suite) with its suite replaced by trixie.
	awk -v suite="$SUITE" '
	done || $1 != "deb" || /security/ { next }
	{
		i = 2
		if ($2 ~ /^\[/) {	# [ options ]
			while (i <= NF && $i !~ /\]$/)
				i++
			i++
		}
		if (i + 1 > NF || $(i + 1) ~ /-/ || $(i + 1) ~ /\//)
			next
		$(i + 1) = suite
		print
		done = 1
	}' /etc/apt/sources.list >"$T/sources.list.d/trixie.list"
	from=/etc/apt/sources.list
	src=$T/sources.list.d/trixie.list
else
	die "neither /etc/apt/sources.list.d/debian.sources nor" \
	    "/etc/apt/sources.list is readable"
fi
[ -s "$src" ] || die "no main Debian archive entry found in $from"
note "apt sources derived from $from:"
sed 's/^/	/' "$src" >&2

APT_OPTS=(
	-o "Dir::Etc::SourceList=/dev/null"
	-o "Dir::Etc::SourceParts=$T/sources.list.d"
	-o "Dir::Etc::Preferences=/dev/null"
	-o "Dir::Etc::PreferencesParts=$T/preferences.d"
	-o "Dir::State::Lists=$T/lists"
	-o "Dir::Cache=$T/cache"
	-o "APT::Default-Release="
	-o "Acquire::Languages=none"
	-o "Acquire::Retries=3"
)

note "apt-get update ($SUITE index, into $T)"
apt-get "${APT_OPTS[@]}" -q update >&2 ||
    die "apt-get update of the $SUITE index failed (network? keyring?)"

note "apt-get download ${PKGS[*]}"
(cd "$T/debs" && apt-get "${APT_OPTS[@]}" -q download "${PKGS[@]}") >&2 ||
    die "apt-get download failed: are ${PKGS[*]} still in $SUITE?"

for p in "${PKGS[@]}"; do
	set -- "$T/debs/${p}_"*.deb
	[ -f "$1" ] || die "$p was not downloaded"
	note "unpacking $(basename "$1")"
	dpkg -x "$1" "$T/root" || die "dpkg -x $1 failed"
done

# Unpack everything first, then copy: an interrupted run leaves either
# nothing new or a complete tree, never headers without libraries.
cp -a "$T/root/." "$prefix/" || die "cannot copy into $prefix"
installed ||
    die "unpacked, but build_info.h or the .so files are missing from $prefix"

ver=$(sed -n 's/^#define MBEDTLS_VERSION_STRING[ \t]*"\(.*\)"/\1/p' \
    "$prefix/usr/include/mbedtls/build_info.h")
note "mbedTLS ${ver:-(unknown version)} in $prefix"
echo "$libdir"
