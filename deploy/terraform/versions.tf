terraform {
  required_version = ">= 1.6.0, < 2.0.0"

  required_providers {
    # Pinned exactly: provider upgrades are reviewed changes, not surprises.
    digitalocean = {
      source  = "digitalocean/digitalocean"
      version = "2.67.0"
    }
  }
}
