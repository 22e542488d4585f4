environment         = "qa"
location            = "westeurope"
storage_replication = "LRS"
registry_sku        = "Basic"
cluster_vm_size     = "Standard_DS3_v2"
cluster_vm_priority = "LowPriority"
cluster_max_nodes   = 2
log_retention_days  = 30
