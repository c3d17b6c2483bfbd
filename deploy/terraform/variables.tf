variable "cluster_name" {
  description = "Name of the DigitalOcean Kubernetes (DOKS) cluster."
  type        = string
  default     = "ultra-boost"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.cluster_name))
    error_message = "cluster_name must be a DNS label: lowercase letters, digits and '-', at most 63 characters."
  }
}

variable "region" {
  description = "DigitalOcean region slug (doctl kubernetes options regions)."
  type        = string
  default     = "fra1"
}

variable "kubernetes_version_prefix" {
  description = "Kubernetes minor release to run, as a DOKS version prefix (e.g. \"1.34.\"); the newest patch of it is used. The manifests are validated against this minor in CI."
  type        = string
  default     = "1.34."

  validation {
    condition     = can(regex("^1\\.[0-9]+\\.$", var.kubernetes_version_prefix))
    error_message = "kubernetes_version_prefix must look like \"1.34.\" (major.minor and a trailing dot)."
  }
}

variable "node_size" {
  description = "Droplet size slug of the worker nodes (doctl kubernetes options sizes)."
  type        = string
  default     = "s-2vcpu-4gb"
}

variable "min_nodes" {
  description = "Fewest worker nodes. ultra-boost runs 3 replicas with required pod anti-affinity on kubernetes.io/hostname, so at least 3."
  type        = number
  default     = 3

  validation {
    condition     = var.min_nodes >= 3
    error_message = "min_nodes must be at least 3: production runs 3 replicas, one per node (required anti-affinity)."
  }
}

variable "max_nodes" {
  description = "Most worker nodes: the HPA's 6 replicas, one per node, plus one surge pod of a rolling update and one canary pod."
  type        = number
  default     = 8

  validation {
    condition     = var.max_nodes >= 8
    error_message = "max_nodes must be at least 8: HPA maximum 6 + 1 surge + 1 canary, one per node."
  }
}

variable "maintenance_day" {
  description = "Day of the weekly maintenance window for patch upgrades (monday..sunday or any)."
  type        = string
  default     = "tuesday"
}

variable "maintenance_start_time" {
  description = "Start (UTC, HH:MM) of the weekly maintenance window."
  type        = string
  default     = "04:00"
}

variable "registry_name" {
  description = "Name of the DigitalOcean Container Registry the images are pushed to (registry.digitalocean.com/<name>)."
  type        = string
  default     = "ultra-boost"
}

variable "registry_tier" {
  description = "Container registry subscription tier (starter, basic or professional)."
  type        = string
  default     = "basic"
}

variable "tags" {
  description = "Tags applied to the cluster and its nodes."
  type        = list(string)
  default     = ["ultra-boost", "terraform"]
}
