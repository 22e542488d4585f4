# What `conf/env/<env>.yaml` needs for env.backend=azure (export them as environment variables).
output "subscription_id" {
  value = data.azurerm_client_config.current.subscription_id
}

output "resource_group" {
  value = azurerm_resource_group.this.name
}

output "workspace_name" {
  value = azurerm_machine_learning_workspace.this.name
}

output "compute_cluster" {
  value = azurerm_machine_learning_compute_cluster.cpu.name
}
