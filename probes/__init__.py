"""Protocol probes for mail systems: a library with no knowledge of the daemon that schedules it."""
