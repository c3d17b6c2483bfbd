# The API token comes from the environment (DIGITALOCEAN_TOKEN), never from a
# file in this repository or a tfvars file.
provider "digitalocean" {}
