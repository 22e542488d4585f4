# What the pipelines of this env need (put them in the env's variable group / GitHub environment):
# AZURE_<ENV>_SUBSCRIPTION_ID, AZUREML_<ENV>_RESOURCE_GROUP, AZUREML_<ENV>_WORKSPACE,
# AZUREML_<ENV>_ENDPOINT, and the client id of the identity the service connection signs in as.
output "subscription_id" {
  value = var.subscription_id
}

output "tenant_id" {
  value = data.azurerm_client_config.current.tenant_id
}

output "resource_group" {
  value = azurerm_resource_group.this.name
}

output "workspace_name" {
  value = azurerm_machine_learning_workspace.this.name
}

output "compute_cluster" {
  description = "conf/compute/azure_cpu_cluster.yaml `cluster:`"
  value       = azurerm_machine_learning_compute_cluster.cpu.name
}

output "endpoint_name" {
  description = "azure.endpoint_name of this env"
  value       = azapi_resource.endpoint.name
}

output "pipeline_client_id" {
  description = "The CI/CD identity: the service connection's / azure/login's client id"
  value       = azurerm_user_assigned_identity.pipeline.client_id
}

output "pipeline_principal_id" {
  description = "Its object id: in QA's cross_env_principal_ids when this is PROD"
  value       = azurerm_user_assigned_identity.pipeline.principal_id
}

output "application_insights_connection_string" {
  value     = azurerm_application_insights.this.connection_string
  sensitive = true
}
