"""Names shared by the controller, its webhook and its CLI (no I/O, no globals that change)."""

import enum

GROUP = "graybaggage.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
LANES = "lanes"
RELEASES = "grayreleases"

FIELD_MANAGER = "graybaggage"

#: label on the base Deployment a GrayRelease targets (value: the GrayRelease name);
#: the mutating webhook's objectSelector matches it, so only targeted Deployments are ever sent to it.
RELEASE_LABEL = "graybaggage.io/gray-release"
#: label on every object the controller creates for a GrayRelease (gray Deployment, lane Services).
OWNER_LABEL = "graybaggage.io/release"
#: the lane label on gray pods (and in the gray Deployment's / lane Service's selector).
LANE_LABEL = "graybaggage.io/lane"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "graybaggage"

#: on the base Deployment: hash of the stable pod template (the webhook pauses on any other template).
STABLE_ANN = "graybaggage.io/stable-revision"
#: on the base Deployment: set when graybaggage (webhook or controller) paused it.
PAUSED_BY_ANN = "graybaggage.io/paused-by"
#: on the gray Deployment: hash of its desired spec (compare desired with observed without defaults).
SPEC_HASH_ANN = "graybaggage.io/spec-hash"
#: on a pinned base Service: its original selector (JSON) and the GrayRelease that pinned it.
ORIGINAL_SELECTOR_ANN = "graybaggage.io/original-selector"
PINNED_BY_ANN = "graybaggage.io/pinned-by"
#: on the user's Deployment (opt-in): the Celery queues its workers consume, comma-separated
#: ("default,emails"). While the gray Deployment has a ready pod, the lane table lists them under
#: `lanes.<tag>.queues.celery`, so producers in the lane send those tasks to `<queue>-<tag>`.
CELERY_QUEUES_ANN = "graybaggage.io/celery-queues"
#: the version of `lanes.<tag>.queues` the controller writes (docs/lane-table.md, "Task queues")
QUEUES_VERSION = 1
#: GrayRelease condition type reporting the Celery queues annotation (present only with the annotation)
CELERY_QUEUES_CONDITION = "CeleryQueues"
#: on a GrayRelease, written by `kubectl-graybaggage approve`: "<canaryRevision>/<step>".
APPROVE_ANN = "graybaggage.io/approve"
#: on a GrayRelease, written by `kubectl-graybaggage rollback`: "<canaryRevision>".
ROLLBACK_ANN = "graybaggage.io/rollback"

POD_TEMPLATE_HASH = "pod-template-hash"
LANE_ENV = "GRAYBAGGAGE_LANE"

TABLE_CONFIGMAP = "graybaggage-lanes"
TABLE_KEY = "lanes.json"
TABLE_VERSION = 1

FINALIZER = "graybaggage.io/finalizer"
WEBHOOK_HANDLER_ID = "pause-base"



class Phase(str, enum.Enum):
    """GrayRelease `status.phase`: exactly the CRD's enum (controller/deploy/crds; tests/controller/test_names.py)."""
    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    ROLLING_BACK = "RollingBack"
    FAILED = "Failed"

    def __str__(self) -> str:
        return str(self.value)


PHASES = tuple(p.value for p in Phase)

# ---- entry routing (controller/graybaggage_controller/entry/)
#: on a user's route object (HTTPRoute, stable Ingress): JSON record of exactly what graybaggage added,
#: so the change can be undone precisely (see entry/gateway_api.py and entry/ingress.py).
ENTRY_ROUTING_ANN = "graybaggage.io/entry-routing"
#: on a canary Ingress graybaggage created: the user's Ingress it was derived from.
ENTRY_OF_LABEL = "graybaggage.io/entry-of"
#: prefix of the HTTPRoute rules graybaggage adds: `graybaggage-<tag>-<index of the stable rule>`.
ENTRY_RULE_PREFIX = "graybaggage-"
#: Lane status condition types.
ENTRY_ROUTED = "EntryRouted"
ENTRY_HEADER = "EntryHeader"
