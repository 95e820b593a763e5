"""What tests share, by concern. A test module imports from here (or gets a fixture from a conftest),
never from another test module: a test file can then be run, moved or deleted on its own.

- ``wait``: ``eventually()``, the one way a test waits for a condition (no hand-written deadline loops);
  ``STARTUP_BOUND``, the hang guard for a process of ours to start serving.
- ``procs``: bounds on our processes counted in time they were not waiting for a CPU (``RunnableClock``,
  ``run_bounded``, ``wait_exit``; ``eventually(runnable=)`` uses it): a starved machine is slow, not a hang.
- ``schedule``: the order ``--dist loadfile`` hands files to the workers (most expensive first, the fault
  matrix in parts), hooked in by conftest.
- ``daemon``: a ``mailcanary run`` subprocess, its JSON log lines.
- ``metrics``: scraping ``/metrics`` over HTTP and picking one sample.
- ``postfix``: the session stack's Postfix queue (wait until it is empty, or holds nothing for a mailbox,
  then clear the mailbox).
- ``stackconfig``: YAML configs pointing at the session MailStack; ``roundtrip``: a Runner over them and
  one round trip through it.
- ``configs``: a complete config file and the one-line error checks of the config tests.
- ``messages``: mail built as others build it (bounces, canaries of earlier releases).
- ``faultservers``: in-process servers that misbehave at one step, and round-trip settings against them.
- ``tlsaudit``: TLS variant endpoints and what a legacy-version audit must show (fixtures in conftest);
  ``tlsfacts``: made-up TLS facts for the scrape golden test and benchmarks.
- ``dnsstack``, ``milters``, ``sharedmailbox``: a real DNS (nsd + unbound), DKIM/DMARC milters, a second
  client busy in a shared mailbox.
- ``deploy``, ``rules``, ``dashboards``: the shipped deploy files, Prometheus rules and Grafana boards.
- ``weaktls``: OpenSSL servers with one weak parameter (the audit's verdict tests); ``weakservers``,
  ``nsrelay``, ``oracle``: real Postfix/Dovecot/gnutls-serv configured weak, a counting loopback relay,
  testssl.sh and sslscan as the oracle (the TLS scan matrix); ``fakehello``, ``gnutlsns``: what no real
  server here offers (SSLv2/SSLv3/EXPORT, faults) and gnutls-serv in a private network namespace.
- ``alerting``: the alert path: shipped rules with test-time ``for:``, the example Alertmanager config with
  short timers and loopback webhooks, a webhook receiver that records notifications.

The harness packages ``tests/mailstack`` (Postfix + Dovecot) and ``tests/interop`` stay where they are.
"""
