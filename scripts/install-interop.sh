#!/bin/sh
# The other mail servers of the interoperability matrix (tests/interop): Exim, Cyrus IMAP and OpenSMTPD.
# In apt they conflict with Postfix and Dovecot (mail-transport-agent, imap-server, pop3-server), so they
# are not installed: their .debs are downloaded (`apt-get download`) and unpacked (`dpkg -x`) under
# $UNPACK_ROOT/<package>, and run from there by the test harness on loopback. Their shared libraries do not
# conflict and are installed normally. Run as root by scripts/install-deps.sh; idempotent.
set -eu

UNPACK_ROOT=${MAILCANARY_INTEROP_ROOT:-/opt/mailcanary-interop}
# Packages unpacked, never installed (maintainer scripts never run: no daemon starts, no MTA is replaced).
UNPACKED="
cyrus-common
cyrus-imapd
cyrus-pop3d
exim4-base
exim4-daemon-heavy
opensmtpd
sasl2-bin
"
# Their runtime dependencies that apt may install beside Postfix and Dovecot.
LIBS="
libclamav12
libcrypt1
libdb5.3
libevent-2.1-7
libical3
libidn12
libpam0g
libpcre3
libssl3
libxapian30
libzephyr4
zlib1g
"

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

missing=""
for pkg in $LIBS; do
  installed "$pkg" || missing="$missing $pkg"
done
todo=""
for pkg in $UNPACKED; do
  [ -f "$UNPACK_ROOT/$pkg/.unpacked" ] || todo="$todo $pkg"
done
if [ -z "$missing" ] && [ -z "$todo" ]; then
  echo "install-interop: all present"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
if [ -n "$missing" ]; then
  echo "install-interop: installing:$missing"
  # shellcheck disable=SC2086  # a list of package names
  apt-get install -y -q --no-install-recommends $missing
fi
if [ -n "$todo" ]; then
  echo "install-interop: unpacking:$todo"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # apt downloads as _apt when it can write there (else it warns and downloads as root).
  chown _apt "$work" 2>/dev/null || true
  # shellcheck disable=SC2086
  (cd "$work" && apt-get download -q $todo)
  for pkg in $todo; do
    rm -rf "${UNPACK_ROOT:?}/$pkg"
    mkdir -p "$UNPACK_ROOT/$pkg"
    dpkg -x "$work/${pkg}"_*.deb "$UNPACK_ROOT/$pkg"
    touch "$UNPACK_ROOT/$pkg/.unpacked"
  done
fi
echo "install-interop: done"
