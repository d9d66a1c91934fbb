"""Entry routing: the small provider interface and its I/O helpers. The pure model (intents, outcomes,
validation, dye rules) is in model.py and re-exported here for the providers.

    provider.ensure(intents) -> {tag: Outcome}   # exactly these intents; undo everything else it made
    provider.finalise() -> bool                  # = ensure([]): the namespace's routes as the user wrote them

Providers own only what they created (marked by `graybaggage.io/entry-routing` on the user's object, by
rule names on HTTPRoutes, by labels on the canary Ingresses) and undo it precisely.
"""

from __future__ import annotations

import abc
import logging

from ..kube import Kube, NotFound
from .model import (  # noqa: F401 - re-exported for the providers
    BAGGAGE,
    CLASS_TYPES,
    GW_GROUP,
    HTTPROUTE,
    INGRESS,
    MATCH_TYPES,
    Intent,
    Obj,
    Outcome,
    condition,
    dye_rules,
    failed,
    inactive,
    prefix_regex,
    re_escape,
    route_of,
    set_headers_of,
    validate_entry,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- I/O helpers

def get(kube: Kube, kind: str, namespace: str | None, name: str) -> Obj | None:
    """GET; None when the object, or its whole API (CRD not installed), is missing."""
    return kube.get(kind, namespace, name)


def list_(kube: Kube, kind: str, namespace: str, label_selector: str | None = None) -> list[Obj] | None:
    """LIST; None when the API is not served."""
    try:
        return kube.list(kind, namespace, label_selector)
    except NotFound:
        return None


def api_served(kube: Kube, kind: str, namespace: str) -> bool:
    return list_(kube, kind, namespace, "graybaggage.io/none-such") is not None


class Provider(abc.ABC):
    """One entry-routing provider for one namespace."""

    #: which intents this provider handles: (kind, classType)
    handles: tuple[str, str | None] = ("", None)

    def __init__(self, kube: Kube, namespace: str):
        self.kube = kube
        self.namespace = namespace

    @abc.abstractmethod
    def ensure(self, intents: list[Intent]) -> dict[str, Outcome]:
        """Program exactly `intents` (all of this provider's in the namespace) and undo anything else this
        provider made there. Returns an Outcome per lane tag."""

    def finalise(self) -> bool:
        """Undo everything this provider made in the namespace; True when done."""
        return all(o.done for o in self.ensure([]).values())
