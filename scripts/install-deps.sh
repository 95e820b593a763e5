#!/bin/sh
# Install the Debian 12 packages that mailcanary's tests drive for real: Postfix, Dovecot (IMAP, POP3),
# Prometheus, Alertmanager, blackbox_exporter, openssl, NSD (authoritative DNS) and Unbound (validating
# resolver) for the domain checks, OpenDMARC (the receiving side's DMARC verdict), testssl.sh and sslscan (the
# ground truth of the TLS scan matrix) and gnutls-bin (gnutls-serv: RC4, 3DES, OCSP stapling), time (their CPU), systemd (for `systemd-analyze verify` of
# the shipped unit; installed only if missing), Chromium (headless, for the status page test) and
# node + npm (tsc checks the dashboards against @grafana/schema; a node that brings its own npm,
# e.g. NodeSource's, is kept as is), podman + runc + mmdebstrap (scripts/container-test builds and runs
# the container image from a locally made Debian base). Run as root; idempotent and quick when all
# is present. Python packages are installed by scripts/test, not here.
set -eu

PACKAGES="postfix dovecot-imapd dovecot-pop3d dovecot-sieve spamassassin opendkim opendmarc prometheus prometheus-alertmanager prometheus-blackbox-exporter openssl systemd chromium nsd unbound podman runc mmdebstrap testssl.sh sslscan gnutls-bin time"

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

# Name only what is missing: naming an installed package in apt-get install upgrades it (and its libs).
missing=""
for pkg in $PACKAGES; do
  installed "$pkg" || missing="$missing $pkg"
done
# node and npm: by command, not by package, so that another packaging of node is not replaced.
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
# scripts/test needs a venv where pip may not install into an externally managed system Python.
if command -v python3 >/dev/null 2>&1; then
  if python3 -c 'import sys, sysconfig, os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) and sys.prefix == sys.base_prefix else 1)' \
      && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing="$missing python3-venv"
  fi
else
  missing="$missing python3 python3-venv"
fi

if [ -z "$missing" ]; then
  echo "install-deps: all packages present"
  exec "$(dirname "$0")/install-interop.sh"
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing:$missing; run as root: sudo $0" >&2
  exit 1
fi

echo "install-deps: installing:$missing"
export DEBIAN_FRONTEND=noninteractive

# Forbid maintainer scripts to start daemons (invoke-rc.d honours exit 101): without it, on a box
# without systemd, dovecot would come up on *:143/993/110/995 and prometheus on *:9090.
created_policy=0
cleanup() {
  if [ "$created_policy" = 1 ]; then
    rm -f /usr/sbin/policy-rc.d
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  created_policy=1
fi

# Postfix "No configuration": no /etc/postfix/main.cf and nothing started; the tests use their own -c dir.
debconf-set-selections <<'PRESEED'
postfix postfix/main_mailer_type select No configuration
postfix postfix/mailname string example.test
PRESEED

apt-get update -q
# shellcheck disable=SC2086  # $missing is a list of package names
apt-get install -y -q --no-install-recommends $missing
echo "install-deps: done"
"$(dirname "$0")/install-interop.sh"
