"""Entry routing on Higress (open source): a canary Ingress plus header control annotations.

- canary Ingress `<ingress>-<tag>` (see ingress.py) with `higress.io/canary: "true"`, the match
  (`higress.io/canary-by-header` lower-cased + `-value` for Exact, `-pattern` for Prefix/RegularExpression,
  or `higress.io/canary-by-cookie`) or `higress.io/canary-weight`, and
  `higress.io/request-header-control-update: <header> <tag>` (one `Name Value` per line), which Higress
  applies to the canary destination, weight included;
- `higress.io/request-header-control-remove: <header>,baggage` on the user's (stable) Ingress (a W3C baggage
  member `<header>=<tag>` is a lane tag too), appended to the
  comma list if it already has one; the replaced value is recorded and put back on clean-up.

Traps (from the team note on entry gateways): Higress reads header control ONLY under `higress.io/`
(Kruise's MSE script writes `mse.ingress.kubernetes.io/...`, which open-source Higress ignores), and reads
canary keys from `nginx.ingress.kubernetes.io/` first: the canary Ingress is generated from scratch, so no
stray nginx canary key of the user's is copied onto it. The docs' `canary-by-weight` / `canary-weight-totatl`
are misspellings; the code reads `canary-weight`.
"""

from __future__ import annotations

from .base import Intent
from .ingress import IngressProvider

PREFIX = "higress.io/"
UPDATE = PREFIX + "request-header-control-update"
REMOVE = PREFIX + "request-header-control-remove"


def header_update(it: Intent) -> str:
    return "\n".join(f"{h['name']} {h['value']}" for h in it.set_headers)


class HigressProvider(IngressProvider):
    handles = ("ingress", "higress")
    class_type = "higress"
    prefix = PREFIX
    remove_key = REMOVE

    def canary_annotations(self, it: Intent):
        ann, problem = super().canary_annotations(it)
        if problem:
            return ann, problem
        ann[UPDATE] = header_update(it)
        return ann, None
