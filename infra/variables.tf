variable "subscription_id" {
  description = "The env's own Azure subscription (QA and PROD may be different subscriptions of one Microsoft Entra tenant); the pipeline passes it as TF_VAR_subscription_id"
  type        = string
}

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

variable "name_suffix" {
  description = "Suffix of the globally unique names (storage, key vault, registry, endpoint); null: derived from the subscription and env"
  type        = string
  default     = null
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

variable "soft_delete_days" {
  description = "Days deleted blobs, containers and key vault objects stay recoverable"
  type        = number
  default     = 7
}

variable "registry_sku" {
  type    = string
  default = "Basic"
}

variable "log_retention_days" {
  type    = number
  default = 30
}

variable "cluster_name" {
  description = "The training cluster; keep equal to `cluster:` in conf/compute/azure_cpu_cluster.yaml"
  type        = string
  default     = "cpu-cluster"
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
  default     = "PT30M"
}

variable "gpu_cluster_enabled" {
  description = "Create the GPU training cluster (compute=azure_gpu_cluster); off by default: ask for GPU quota in the region first"
  type        = bool
  default     = false
}

variable "gpu_cluster_name" {
  description = "The GPU training cluster; keep equal to `cluster:` in conf/compute/azure_gpu_cluster.yaml"
  type        = string
  default     = "gpu-cluster"
}

variable "gpu_cluster_vm_size" {
  description = "One NVIDIA T4 per node (conf/compute/azure_gpu_cluster.yaml: process_count_per_instance = GPUs per node)"
  type        = string
  default     = "Standard_NC4as_T4_v3"
}

variable "gpu_cluster_max_nodes" {
  type    = number
  default = 2
}

variable "compute_instance_enabled" {
  description = "Create a compute instance for the quickstart notebook in Azure ML Studio; off by default (it bills while it runs)"
  type        = bool
  default     = false
}

variable "compute_instance_name" {
  description = "The notebook's compute instance: unique in the Azure region, 3-24 characters"
  type        = string
  default     = "mnistops-notebook"
}

variable "compute_instance_vm_size" {
  type    = string
  default = "Standard_DS3_v2"
}

variable "compute_instance_user_object_id" {
  description = "The Microsoft Entra object id of the user the (personal) compute instance is assigned to; null: whoever applies"
  type        = string
  default     = null
}

variable "endpoint_name" {
  description = "The online endpoint (unique per region); null: mnist-<env>-<suffix>"
  type        = string
  default     = null
}

variable "pipeline_federated_subjects" {
  description = "Service connections / GitHub environments that sign in as this env's CI/CD identity (workload identity federation)"
  type = list(object({
    name    = string
    issuer  = string
    subject = string
  }))
  default = []
}

variable "cross_env_principal_ids" {
  description = "Object ids of other envs' CI/CD identities (in QA: PROD's) that may read approved models and hand over labelled data"
  type        = list(string)
  default     = []
}

variable "ci_webhook_url" {
  description = "Webhook the endpoint's alerts call to queue QA's CI (an Azure DevOps incoming webhook URL); null: e-mail only"
  type        = string
  default     = null
  sensitive   = true
}

variable "alert_emails" {
  description = "Who is e-mailed when an endpoint alert fires"
  type        = list(string)
  default     = []
}

variable "alert_p99_latency_ms" {
  description = "p99 latency budget of the endpoint (as monitor.thresholds.max_p99_ms)"
  type        = number
  default     = 500
}

variable "alert_5xx_per_minute" {
  description = "5xx answers per minute, averaged over 5 minutes, above which the endpoint alerts"
  type        = number
  default     = 1
}

variable "tags" {
  type    = map(string)
  default = {}
}
