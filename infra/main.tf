# The Azure resources of one mnistops environment (qa or prod), in that env's own subscription: a
# resource group holding an Azure ML workspace with its storage, key vault, Log Analytics +
# Application Insights and container registry, and the CPU training cluster (Terraform is its only
# owner: `stage=provision` creates environments and data assets, never the cluster).
# identity.tf: the pipelines' identity and its roles; endpoint.tf: the online endpoint, its logs and
# its alert rules. One state per env (versions.tf); `terraform plan -var-file=qa.tfvars`.

data "azurerm_client_config" "current" {}

locals {
  name = "${var.prefix}-${var.environment}"
  # Globally unique names (storage, key vault, registry, endpoint) get a short suffix derived from the
  # subscription and the env: stable across applies, and the same again if the state were rebuilt.
  suffix  = coalesce(var.name_suffix, substr(sha1("${var.subscription_id}/${var.environment}"), 0, 6))
  compact = lower(replace("${var.prefix}${var.environment}", "/[^a-zA-Z0-9]/", ""))
  tags = merge(var.tags, {
    environment = var.environment
    project     = "mnistops"
  })
}

resource "azurerm_resource_group" "this" {
  name     = "rg-${local.name}"
  location = var.location
  tags     = local.tags
}

resource "azurerm_storage_account" "this" {
  #checkov:skip=CKV_AZURE_59:No VNet here: Azure ML compute and hosted CI agents reach the workspace storage over its public endpoint; network isolation needs a VNet, private endpoints and self-hosted agents inside it
  #checkov:skip=CKV2_AZURE_33:Private endpoints need a VNet and private DNS zones, which this setup does not create (see CKV_AZURE_59)
  #checkov:skip=CKV2_AZURE_40:Azure ML's default datastores (workspaceblobstore, workspacefilestore) authenticate with the account key unless every user and compute identity is given blob roles; the key stays in the workspace's key vault
  #checkov:skip=CKV2_AZURE_1:Microsoft-managed keys: the data is public MNIST and models trained on it; a customer-managed key would add a key, an identity and key-rotation duties for no confidentiality gain
  #checkov:skip=CKV_AZURE_206:Replication is per env (storage_replication): ZRS in PROD; QA uses LRS because everything in it can be rebuilt by CI from code and data
  #checkov:skip=CKV_AZURE_33:Azure ML does not use this account's queue service; blob and file access is recorded by Azure ML's own run history
  name                            = "st${substr(local.compact, 0, 16)}${local.suffix}"
  resource_group_name             = azurerm_resource_group.this.name
  location                        = azurerm_resource_group.this.location
  account_tier                    = "Standard"
  account_replication_type        = var.storage_replication
  min_tls_version                 = "TLS1_2"
  https_traffic_only_enabled      = true
  allow_nested_items_to_be_public = false
  shared_access_key_enabled       = true # see CKV2_AZURE_40; SAS tokens made from it are logged past a day (sas_policy)
  tags                            = local.tags

  blob_properties {
    delete_retention_policy {
      days = var.soft_delete_days
    }
    container_delete_retention_policy {
      days = var.soft_delete_days
    }
  }

  sas_policy {
    expiration_period = "01.00:00:00"
    expiration_action = "Log"
  }
}

# Every read, write and delete on the workspace's blobs, into the env's Log Analytics.
resource "azurerm_monitor_diagnostic_setting" "storage_blob" {
  name                       = "to-log-analytics"
  target_resource_id         = "${azurerm_storage_account.this.id}/blobServices/default"
  log_analytics_workspace_id = azurerm_log_analytics_workspace.this.id

  enabled_log {
    category = "StorageRead"
  }
  enabled_log {
    category = "StorageWrite"
  }
  enabled_log {
    category = "StorageDelete"
  }
}

resource "azurerm_key_vault" "this" {
  #checkov:skip=CKV_AZURE_189:The vault denies public traffic except trusted Azure services (network_acls); disabling the public endpoint entirely needs a private endpoint in a VNet, which this setup does not create
  #checkov:skip=CKV2_AZURE_32:Private endpoints need a VNet and private DNS zones (see CKV_AZURE_189)
  name                       = "kv-${trimsuffix(substr(local.name, 0, 14), "-")}-${local.suffix}"
  resource_group_name        = azurerm_resource_group.this.name
  location                   = azurerm_resource_group.this.location
  tenant_id                  = data.azurerm_client_config.current.tenant_id
  sku_name                   = "standard"
  purge_protection_enabled   = true
  soft_delete_retention_days = var.soft_delete_days
  tags                       = local.tags

  network_acls {
    default_action = "Deny"
    bypass         = "AzureServices" # Azure ML reaches its vault as a trusted service
  }
}

resource "azurerm_log_analytics_workspace" "this" {
  name                = "log-${local.name}"
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = local.tags
}

# Application Insights of the workspace: Azure ML jobs and the online deployments (app_insights_enabled)
# send their telemetry here, into the env's Log Analytics workspace.
resource "azurerm_application_insights" "this" {
  name                = "appi-${local.name}"
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  workspace_id        = azurerm_log_analytics_workspace.this.id
  application_type    = "web"
  tags                = local.tags
}

resource "azurerm_container_registry" "this" {
  #checkov:skip=CKV_AZURE_139:Azure ML builds and pulls the training and inference images over the registry's public endpoint (no VNet here); admin user is off, pulls use Entra identities (AcrPull)
  #checkov:skip=CKV_AZURE_163:Image scanning is Microsoft Defender for Containers, a subscription-level plan: enable it per subscription, not per registry
  #checkov:skip=CKV_AZURE_164:Content trust (Docker Content Trust) is being retired by Azure and Azure ML does not sign the images it builds
  #checkov:skip=CKV_AZURE_165:One region per env: geo-replication is a Premium feature for multi-region serving, which this setup does not do
  #checkov:skip=CKV_AZURE_166:Quarantine is a Premium preview feature that needs a scanner to release images; Azure ML could not pull its freshly built images
  #checkov:skip=CKV_AZURE_167:Retention of untagged manifests is Premium-only; QA uses Basic. Azure ML tags every image it builds by environment digest
  #checkov:skip=CKV_AZURE_233:Zone redundancy is Premium-only (QA uses Basic); images are rebuilt from code if a zone is lost
  #checkov:skip=CKV_AZURE_237:Dedicated data endpoints serve firewall rules per region; without a registry firewall (CKV_AZURE_139) they add nothing
  name                = "cr${substr(local.compact, 0, 40)}${local.suffix}"
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  sku                 = var.registry_sku
  admin_enabled       = false
  tags                = local.tags
}

resource "azurerm_machine_learning_workspace" "this" {
  #checkov:skip=CKV2_AZURE_50:The workspace's default storage is reached over its public endpoint (see CKV_AZURE_59 on the storage account): TLS 1.2, no anonymous blob access, Entra ID or key auth
  #checkov:skip=CKV_AZURE_144:Hosted CI agents and people reach the workspace over its public endpoint; a private workspace needs a VNet, private endpoints and self-hosted agents inside it. Access is Entra ID + RBAC (identity.tf)
  name                    = "mlw-${local.name}"
  resource_group_name     = azurerm_resource_group.this.name
  location                = azurerm_resource_group.this.location
  application_insights_id = azurerm_application_insights.this.id
  key_vault_id            = azurerm_key_vault.this.id
  storage_account_id      = azurerm_storage_account.this.id
  container_registry_id   = azurerm_container_registry.this.id
  tags                    = local.tags

  identity {
    type = "SystemAssigned"
  }
}

# The training clusters. Terraform is their single owner: `stage=provision` never creates or changes
# one, and conf/compute/azure_cpu_cluster.yaml / azure_gpu_cluster.yaml name them (`cluster:`) so jobs
# target them. Each has a system-assigned identity: the identity a job runs as (identity.tf gives it
# its roles on the workspace and the registry).
resource "azurerm_machine_learning_compute_cluster" "cpu" {
  name                          = var.cluster_name
  location                      = azurerm_resource_group.this.location
  machine_learning_workspace_id = azurerm_machine_learning_workspace.this.id
  vm_priority                   = var.cluster_vm_priority
  vm_size                       = var.cluster_vm_size
  local_auth_enabled            = false
  ssh_public_access_enabled     = false
  tags                          = local.tags

  scale_settings {
    min_node_count                       = var.cluster_min_nodes
    max_node_count                       = var.cluster_max_nodes
    scale_down_nodes_after_idle_duration = var.cluster_idle_time
  }

  identity {
    type = "SystemAssigned"
  }
}

# The GPU cluster (compute=azure_gpu_cluster), off by default: GPU quota is per subscription and region
# and must be asked for first. `gpu_cluster_enabled = true` in <env>.tfvars creates it.
resource "azurerm_machine_learning_compute_cluster" "gpu" {
  count                         = var.gpu_cluster_enabled ? 1 : 0
  name                          = var.gpu_cluster_name
  location                      = azurerm_resource_group.this.location
  machine_learning_workspace_id = azurerm_machine_learning_workspace.this.id
  vm_priority                   = var.cluster_vm_priority
  vm_size                       = var.gpu_cluster_vm_size
  local_auth_enabled            = false
  ssh_public_access_enabled     = false
  tags                          = local.tags

  scale_settings {
    min_node_count                       = 0
    max_node_count                       = var.gpu_cluster_max_nodes
    scale_down_nodes_after_idle_duration = var.cluster_idle_time
  }

  identity {
    type = "SystemAssigned"
  }
}

# A compute instance for the quickstart notebook in Azure ML Studio (README "In Azure ML Studio"), off
# by default: `compute_instance_enabled = true` in <env>.tfvars creates it. The notebook finds the
# workspace from the config.json Azure ML writes on it and signs in as its system-assigned identity
# (role in identity.tf). Personal: assigned to compute_instance_user_object_id, else to whoever applies.
resource "azurerm_machine_learning_compute_instance" "notebook" {
  count                         = var.compute_instance_enabled ? 1 : 0
  name                          = var.compute_instance_name
  machine_learning_workspace_id = azurerm_machine_learning_workspace.this.id
  virtual_machine_size          = var.compute_instance_vm_size
  authorization_type            = "personal"
  local_auth_enabled            = false
  description                   = "mnistops quickstart notebook (notebooks/quickstart.ipynb)"
  tags                          = local.tags

  dynamic "assign_to_user" {
    for_each = var.compute_instance_user_object_id == null ? [] : [var.compute_instance_user_object_id]
    content {
      object_id = assign_to_user.value
      tenant_id = data.azurerm_client_config.current.tenant_id
    }
  }

  identity {
    type = "SystemAssigned"
  }
}
