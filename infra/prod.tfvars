environment         = "prod"
location            = "westeurope"
storage_replication = "ZRS"
registry_sku        = "Premium"
cluster_vm_size     = "Standard_DS3_v2"
cluster_vm_priority = "Dedicated"
cluster_max_nodes   = 4
log_retention_days  = 90
