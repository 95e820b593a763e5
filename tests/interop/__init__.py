"""The interoperability matrix: mailcanary against real Cyrus IMAP 3.6, Exim 4.96 and OpenSMTPD 6.8 (Debian,
unpacked).

These servers conflict with Postfix and Dovecot in apt, so scripts/install-interop.sh (run by
scripts/install-deps.sh) downloads their .debs and unpacks them under /opt/mailcanary-interop; the harness
runs them from there, as root, each on its own loopback address (Cyrus 127.0.0.31, Exim 127.0.0.32,
OpenSMTPD 127.0.0.33) on kernel-chosen ports, with configs, spools and logs under one
/tmp/mailcanary-interop-* root that the session removes (INTEROP_KEEP=1 keeps it). Run them:

    sudo scripts/install-interop.sh                      # once; a second run says "all present"
    PYTHONPATH=$PWD python -m pytest tests/interop -q     # as root

Without /opt/mailcanary-interop the tests skip, except with CI=true, where that is a failure.
Quirks found and how mailcanary handles them: docs/servers.md.
"""
