output "cluster_id" {
  description = "ID of the Kubernetes cluster (doctl kubernetes cluster kubeconfig save <id>)."
  value       = digitalocean_kubernetes_cluster.main.id
}

output "cluster_name" {
  description = "Name of the Kubernetes cluster."
  value       = digitalocean_kubernetes_cluster.main.name
}

output "cluster_endpoint" {
  description = "URL of the cluster's API server."
  value       = digitalocean_kubernetes_cluster.main.endpoint
}

output "kubernetes_version" {
  description = "Kubernetes version the cluster runs."
  value       = digitalocean_kubernetes_cluster.main.version
}

output "node_pool_id" {
  description = "ID of the autoscaling worker pool."
  value       = digitalocean_kubernetes_cluster.main.node_pool[0].id
}

output "vpc_id" {
  description = "ID of the cluster's VPC."
  value       = digitalocean_vpc.cluster.id
}

output "registry_endpoint" {
  description = "Registry the Makefile and CI push images to (REGISTRY=...)."
  value       = digitalocean_container_registry.main.endpoint
}
