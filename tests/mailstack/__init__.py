"""A real Postfix + Dovecot on loopback for mailcanary's integration tests (see MailStack)."""

from ._net import Endpoint, free_ports, ipv6_available
from ._system import Account, StackError, requirement_problems
from .dovecot import DovecotInstance
from .postfix import PostfixInstance
from .stack import DEFAULT_USERS, DOMAIN, MailStack, make_root, numbered_users, reap_orphans
from .tls import SERVER_NAME, TLSFiles, write_ca, write_leaf

__all__ = [
    "DEFAULT_USERS",
    "DOMAIN",
    "SERVER_NAME",
    "Account",
    "DovecotInstance",
    "Endpoint",
    "MailStack",
    "PostfixInstance",
    "StackError",
    "TLSFiles",
    "free_ports",
    "ipv6_available",
    "make_root",
    "numbered_users",
    "reap_orphans",
    "requirement_problems",
    "write_ca",
    "write_leaf",
]
