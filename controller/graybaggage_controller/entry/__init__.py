"""Entry routing: the controller programs the user's gateway for a Lane's entry (one module per provider).

    gateway_api.GatewayAPIProvider  HTTPRoute (default)
    higress.HigressProvider         Ingress, classType higress
    nginx.NginxProvider             Ingress, classType nginx (routing only; header from dye rules)
"""

from .base import Provider
from .gateway_api import GatewayAPIProvider
from .higress import HigressProvider
from .model import Intent, Outcome, dye_rules, intents
from .nginx import NginxProvider

PROVIDERS: tuple[type[Provider], ...] = (GatewayAPIProvider, HigressProvider, NginxProvider)

__all__ = ["Intent", "Outcome", "Provider", "PROVIDERS", "GatewayAPIProvider", "HigressProvider", "NginxProvider",
           "dye_rules", "intents"]
