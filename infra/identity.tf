# Who may do what in this env, least privilege:
# - the env's CI/CD identity (a user-assigned managed identity, signed in by the pipelines through
#   workload identity federation: no secret anywhere) works in this env's workspace only;
# - identities of other envs (PROD's, in QA) get exactly two things here: read the models and runs
#   QA approved (promotion), and record labelled production data as a run in QA's workspace MLflow
#   (the monitoring loop hands PROD's feedback to QA's CI: monitoring/production_data.py);
# - the training clusters' identities (what a job runs as: the in-job register, baseline and gate call
#   the workspace's SDK and MLflow) work in this env's workspace and pull its images;
# - the online endpoint's system-assigned identity gets its roles from Azure ML itself (endpoint.tf).
# The identity that runs Terraform itself (the IaC service connection) is not managed here: it needs
# Contributor and Role Based Access Control Administrator on this env's subscription (see README).

resource "azurerm_user_assigned_identity" "pipeline" {
  name                = "id-${local.name}-pipelines"
  resource_group_name = azurerm_resource_group.this.name
  location            = azurerm_resource_group.this.location
  tags                = local.tags
}

# One federated credential per service connection (Azure DevOps) or GitHub environment that signs in
# as this identity, e.g. {name = "ado-mnistops-qa", issuer = "https://vstoken.dev.azure.com/<org id>",
# subject = "sc://<org>/<project>/mnistops-qa"} or {name = "github-qa", issuer =
# "https://token.actions.githubusercontent.com", subject = "repo:<owner>/<repo>:environment:qa"}.
resource "azurerm_federated_identity_credential" "pipeline" {
  for_each            = { for s in var.pipeline_federated_subjects : s.name => s }
  name                = each.key
  resource_group_name = azurerm_resource_group.this.name
  parent_id           = azurerm_user_assigned_identity.pipeline.id
  audience            = ["api://AzureADTokenExchange"]
  issuer              = each.value.issuer
  subject             = each.value.subject
}

# Jobs, models, environments, data assets, endpoints and deployments in this workspace; no compute
# writes (the cluster belongs to Terraform) and no workspace settings.
resource "azurerm_role_assignment" "pipeline_workspace" {
  scope                = azurerm_machine_learning_workspace.this.id
  role_definition_name = "AzureML Data Scientist"
  principal_id         = azurerm_user_assigned_identity.pipeline.principal_id
  principal_type       = "ServicePrincipal"
}

# stage=monitor reads what the endpoint's data collector wrote (modelDataCollector/..., the workspace's
# default datastore) with this identity's own token: read-only, on that one container. AzureML Data
# Scientist reads the datastore's description but no blob, and no datastore secret is asked for.
resource "azurerm_role_assignment" "pipeline_collected_read" {
  scope                = "${azurerm_storage_account.this.id}/blobServices/default/containers/azureml-blobstore-${azurerm_machine_learning_workspace.this.workspace_id}"
  role_definition_name = "Storage Blob Data Reader"
  principal_id         = azurerm_user_assigned_identity.pipeline.principal_id
  principal_type       = "ServicePrincipal"
}

# ----------------------------------------------------------------------- the jobs' identity

# A job on a cluster runs as the cluster's system-assigned identity (DefaultAzureCredential's managed
# identity inside the job): its MLflow runs, metrics and artifacts, and the registry calls of register,
# baseline and gate (models, tags, data assets) are calls on this workspace. AzureML Data Scientist
# allows them and no compute or workspace changes.
resource "azurerm_role_assignment" "cluster_workspace" {
  for_each             = local.cluster_principals
  scope                = azurerm_machine_learning_workspace.this.id
  role_definition_name = "AzureML Data Scientist"
  principal_id         = each.value
  principal_type       = "ServicePrincipal"
}

# The registry's admin user is off: a cluster pulls the environment images Azure ML built with its own identity.
resource "azurerm_role_assignment" "cluster_acr_pull" {
  for_each             = local.cluster_principals
  scope                = azurerm_container_registry.this.id
  role_definition_name = "AcrPull"
  principal_id         = each.value
  principal_type       = "ServicePrincipal"
}

# The quickstart notebook on the compute instance (compute_instance_enabled) signs in as the instance's
# system-assigned identity: the same calls as a job (runs, models, data assets) on this workspace.
resource "azurerm_role_assignment" "compute_instance_workspace" {
  count                = var.compute_instance_enabled ? 1 : 0
  scope                = azurerm_machine_learning_workspace.this.id
  role_definition_name = "AzureML Data Scientist"
  principal_id         = azurerm_machine_learning_compute_instance.notebook[0].identity[0].principal_id
  principal_type       = "ServicePrincipal"
}

locals {
  cluster_principals = merge(
    { cpu = azurerm_machine_learning_compute_cluster.cpu.identity[0].principal_id },
    { for c in azurerm_machine_learning_compute_cluster.gpu : "gpu" => c.identity[0].principal_id },
  )
}

# ----------------------------------------------------------------------- access from other envs

# Promotion (read QA's approved versions, their runs and files) and the monitoring hand-over (a run
# in QA's MLflow holding the labelled images: create it, tag it, upload its file through the
# workspace's artifact service). Nothing else: no jobs, no endpoints, no models written, no data assets.
resource "azurerm_role_definition" "cross_env" {
  count       = length(var.cross_env_principal_ids) > 0 ? 1 : 0
  name        = "mnistops cross-env access (${local.name}-${local.suffix})"
  scope       = azurerm_resource_group.this.id
  description = "Read models and runs of ${local.name}; record another env's labelled production data as a run"

  permissions {
    actions = [
      "Microsoft.MachineLearningServices/workspaces/read",
      "Microsoft.MachineLearningServices/workspaces/models/read",
      "Microsoft.MachineLearningServices/workspaces/models/versions/read",
      "Microsoft.MachineLearningServices/workspaces/experiments/read",
      "Microsoft.MachineLearningServices/workspaces/experiments/runs/read",
      "Microsoft.MachineLearningServices/workspaces/datastores/read",
      "Microsoft.MachineLearningServices/workspaces/experiments/write",
      "Microsoft.MachineLearningServices/workspaces/experiments/runs/write",
      "Microsoft.MachineLearningServices/workspaces/metadata/artifacts/read",
      "Microsoft.MachineLearningServices/workspaces/metadata/artifacts/write",
    ]
  }

  assignable_scopes = [azurerm_resource_group.this.id]
}

resource "azurerm_role_assignment" "cross_env_workspace" {
  for_each           = toset(var.cross_env_principal_ids)
  scope              = azurerm_machine_learning_workspace.this.id
  role_definition_id = azurerm_role_definition.cross_env[0].role_definition_resource_id
  principal_id       = each.value
  principal_type     = "ServicePrincipal"
}

# The model files promotion copies: read-only on this env's workspace storage.
resource "azurerm_role_assignment" "cross_env_storage_read" {
  for_each             = toset(var.cross_env_principal_ids)
  scope                = azurerm_storage_account.this.id
  role_definition_name = "Storage Blob Data Reader"
  principal_id         = each.value
  principal_type       = "ServicePrincipal"
}
