"""graybaggage controller: Lane and GrayRelease (graybaggage.io/v1alpha1).

Public surface: the console scripts `graybaggage-controller` and `kubectl-graybaggage`, and
`read_lane_table(api_client_or_kube, namespace)` to read the published lane table.
"""

from .kube import read_lane_table

__all__ = ["read_lane_table"]
