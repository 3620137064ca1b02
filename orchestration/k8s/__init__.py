"""Kubernetes: the code location a cluster loads, and the pods its runs and steps get (deploy/k8s/)."""
