"""Entry routing on ingress-nginx: routing only.

A canary Ingress `<ingress>-<tag>` (see ingress.py) with `nginx.ingress.kubernetes.io/canary: "true"` and
`canary-by-header` (+ `-value` / `-pattern`), `canary-by-cookie` or `canary-weight`. ingress-nginx cannot
set or remove a header per route without configuration snippets (off by default, rated Critical), and it
is retired upstream, so the lane header must come from the entry service itself: run it with
`GRAYBAGGAGE_EDGE=1`; the controller publishes this entry's matches as dye rules in the lane table
(`lanes.<tag>.entry.rules`, docs/dye-rules.md), so the edge dyes exactly the traffic nginx routes to it
(the bridge). The Lane's condition EntryHeader=False/HeaderFromDyeRules says so.
"""

from __future__ import annotations

from .. import names as n
from .base import Intent, condition
from .ingress import IngressProvider

PREFIX = "nginx.ingress.kubernetes.io/"


def header_message(it: Intent) -> str:
    msg = (f"ingress-nginx cannot set {it.header} per route: the lane header must come from the entry service's "
           f"dye rules. Run {it.service} with GRAYBAGGAGE_EDGE=1; the controller publishes this entry's matches as "
           f"dye rules in the lane table (lanes.{it.tag}.entry.rules, see docs/dye-rules.md), so the edge dyes "
           "exactly the traffic nginx routes to it. Client-sent lane headers are dropped by the edge too.")
    if not it.matches:
        msg += (" A weight alone has no dye-rule equivalent (weights are per request): add a match, or a sticky "
                "percentage dye rule in entry.rules.")
    return msg


class NginxProvider(IngressProvider):
    handles = ("ingress", "nginx")
    class_type = "nginx"
    prefix = PREFIX
    remove_key = None

    def programmed(self, it: Intent, stable: str, canary: str):
        return super().programmed(it, stable, canary) + [
            condition(n.ENTRY_HEADER, False, "HeaderFromDyeRules", header_message(it))]
