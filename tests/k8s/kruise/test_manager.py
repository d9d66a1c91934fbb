"""The real Kruise Rollout manager starts on the test control plane and does what the seed relies on."""
import json

import pytest


@pytest.mark.parametrize("kruise_manager", ["v0.6.2", "v0.5.0"], indirect=True)
def test_manager_serves_rollouts(kruise_manager, k8s_cluster, k8s_namespace):
    assert kruise_manager.alive()
    rollout = {"apiVersion": "rollouts.kruise.io/v1alpha1", "kind": "Rollout",
               "metadata": {"name": "r", "namespace": k8s_namespace},
               "spec": {"objectRef": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"}},
                        "strategy": {"canary": {"steps": [{"replicas": 1}]}}}}
    k8s_cluster.kubectl("apply", "-f", "-", input=json.dumps(rollout))
    got = json.loads(k8s_cluster.kubectl("get", "rollouts.v1beta1.rollouts.kruise.io", "r", "-n", k8s_namespace,
                                         "-o", "json").stdout)
    assert got["apiVersion"] == "rollouts.kruise.io/v1beta1"
