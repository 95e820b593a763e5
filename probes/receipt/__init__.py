"""What the receiving side did with a canary: the folder it landed in (placement), bounces (dsn), the
Received path (received), the authentication verdict (verdict) and the mailbox quota (quota).
"""

from typing import TYPE_CHECKING

from probes.lazy import face

if TYPE_CHECKING:
    from probes.receipt.dsn import MAX_BOUNCE_BYTES, parse_bounce, returned_token
    from probes.receipt.placement import (
        DEFAULT_JUNK_FOLDERS,
        MAX_MAILBOXES,
        MAX_NAMESPACES,
        MAX_OTHER_FOLDERS,
        PLACEMENTS,
        ListedMailbox,
        Namespace,
        Placement,
        choose_junk,
        decode_mutf7,
        other_folders,
        parse_list,
        parse_namespace,
    )
    from probes.receipt.quota import QUOTA_ERRORS, Usage, parse_quota, parse_quotaroot, tightest
    from probes.receipt.received import MAX_HOPS, Hop, Path, parse_hop, path_of
    from probes.receipt.verdict import (
        MICROSOFT365,
        REQUIRED_METHODS,
        Preset,
        Verdict,
        authentication,
        is_trusted,
        spam_scores,
        verdict_of,
    )

__all__ = [
    "DEFAULT_JUNK_FOLDERS",
    "MAX_BOUNCE_BYTES",
    "MAX_HOPS",
    "MAX_MAILBOXES",
    "MAX_NAMESPACES",
    "MAX_OTHER_FOLDERS",
    "MICROSOFT365",
    "PLACEMENTS",
    "QUOTA_ERRORS",
    "REQUIRED_METHODS",
    "Hop",
    "ListedMailbox",
    "Namespace",
    "Path",
    "Placement",
    "Preset",
    "Usage",
    "Verdict",
    "authentication",
    "choose_junk",
    "decode_mutf7",
    "is_trusted",
    "other_folders",
    "parse_bounce",
    "parse_hop",
    "parse_list",
    "parse_namespace",
    "parse_quota",
    "parse_quotaroot",
    "path_of",
    "returned_token",
    "spam_scores",
    "tightest",
    "verdict_of",
]


if not TYPE_CHECKING:  # a module loads when one of its names is first used (probes/lazy.py)
    __getattr__, __dir__ = face(
        __name__,
        {
            "dsn": "MAX_BOUNCE_BYTES parse_bounce returned_token",
            "placement": (
                "DEFAULT_JUNK_FOLDERS MAX_MAILBOXES MAX_NAMESPACES MAX_OTHER_FOLDERS PLACEMENTS"
                " ListedMailbox Namespace Placement choose_junk decode_mutf7 other_folders parse_list"
                " parse_namespace"
            ),
            "quota": "QUOTA_ERRORS Usage parse_quota parse_quotaroot tightest",
            "received": "MAX_HOPS Hop Path parse_hop path_of",
            "verdict": (
                "MICROSOFT365 REQUIRED_METHODS Preset Verdict authentication is_trusted spam_scores"
                " verdict_of"
            ),
        },
    )
