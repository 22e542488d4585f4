variable "environment" {
  description = "qa or prod: one workspace per environment, as mnistops keeps one store per env"
  type        = string
  validation {
    condition     = contains(["dev", "qa", "prod"], var.environment)
    error_message = "environment must be dev, qa or prod."
  }
}

variable "prefix" {
  description = "Short name prefix for every resource"
  type        = string
  default     = "mnistops"
}

variable "location" {
  description = "Azure region"
  type        = string
  default     = "westeurope"
}

variable "storage_replication" {
  type    = string
  default = "LRS"
}

variable "registry_sku" {
  type    = string
  default = "Basic"
}

variable "log_retention_days" {
  type    = number
  default = 30
}

variable "cluster_vm_size" {
  type    = string
  default = "Standard_DS3_v2"
}

variable "cluster_vm_priority" {
  type    = string
  default = "Dedicated"
}

variable "cluster_min_nodes" {
  type    = number
  default = 0
}

variable "cluster_max_nodes" {
  type    = number
  default = 4
}

variable "cluster_idle_time" {
  description = "ISO 8601 duration before idle nodes are released"
  type        = string
  default     = "PT15M"
}

variable "tags" {
  type    = map(string)
  default = {}
}
