"""Shared test fixtures. The Kubernetes control-plane fixtures live in tests/k8s/plugin.py."""
import os

pytest_plugins = ["tests.k8s.plugin"] if os.path.exists(os.path.join(os.path.dirname(__file__), "k8s", "plugin.py")) else []
