# The production cluster: DigitalOcean Kubernetes with one autoscaling node
# pool, its own VPC, and the container registry CI pushes to. Pull access for
# the cluster is DOKS' registry integration (`doctl kubernetes cluster registry
# add <cluster>`, once), so no registry credential lives in Terraform state or
# in the repository.

data "digitalocean_kubernetes_versions" "selected" {
  version_prefix = var.kubernetes_version_prefix
}

resource "digitalocean_vpc" "cluster" {
  name        = "${var.cluster_name}-vpc"
  region      = var.region
  description = "Private network of the ${var.cluster_name} Kubernetes cluster."
}

resource "digitalocean_kubernetes_cluster" "main" {
  name     = var.cluster_name
  region   = var.region
  version  = data.digitalocean_kubernetes_versions.selected.latest_version
  vpc_uuid = digitalocean_vpc.cluster.id
  tags     = var.tags

  # Patch releases inside the pinned minor are applied in the maintenance window;
  # surge upgrades add a node before draining one, and the PodDisruptionBudgets
  # keep at most one ultra-boost replica away at a time.
  auto_upgrade  = true
  surge_upgrade = true
  # A highly available control plane: a rollout guard that cannot reach the API
  # server cannot revert.
  ha = true

  maintenance_policy {
    day        = var.maintenance_day
    start_time = var.maintenance_start_time
  }

  node_pool {
    name       = "${var.cluster_name}-workers"
    size       = var.node_size
    auto_scale = true
    min_nodes  = var.min_nodes
    max_nodes  = var.max_nodes
    tags       = var.tags
    labels = {
      "ultra-boost.dev/pool" = "workers"
    }
  }
}

resource "digitalocean_container_registry" "main" {
  name                   = var.registry_name
  subscription_tier_slug = var.registry_tier
  region                 = var.region
}
