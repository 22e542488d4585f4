# Who may do what in this env, least privilege:
# - the env's CI/CD identity (a user-assigned managed identity, signed in by the pipelines through
#   workload identity federation: no secret anywhere) works in this env's workspace only;
# - identities of other envs (PROD's, in QA) get exactly two things here: read the models and runs
#   QA approved (promotion), and write labelled production data into one handover container
#   (the monitoring loop hands PROD's feedback to QA's CI);
# - the online endpoint pulls its image and reads its model.
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

# ----------------------------------------------------------------------- access from other envs

# Promotion (read QA's approved versions, their runs and files) and the monitoring hand-over
# (register PROD's labelled data as a data asset in QA). Nothing else: no jobs, no endpoints.
resource "azurerm_role_definition" "cross_env" {
  count       = length(var.cross_env_principal_ids) > 0 ? 1 : 0
  name        = "mnistops cross-env access (${local.name}-${local.suffix})"
  scope       = azurerm_resource_group.this.id
  description = "Read models and runs of ${local.name}; register data assets from another env's monitoring"

  permissions {
    actions = [
      "Microsoft.MachineLearningServices/workspaces/read",
      "Microsoft.MachineLearningServices/workspaces/models/read",
      "Microsoft.MachineLearningServices/workspaces/models/versions/read",
      "Microsoft.MachineLearningServices/workspaces/experiments/read",
      "Microsoft.MachineLearningServices/workspaces/experiments/runs/read",
      "Microsoft.MachineLearningServices/workspaces/datastores/read",
      "Microsoft.MachineLearningServices/workspaces/data/read",
      "Microsoft.MachineLearningServices/workspaces/data/versions/write",
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

# The hand-over: one container, an identity-based datastore on it, write access for the other envs
# on that container only, read access for this env's pipelines and training cluster.
resource "azurerm_storage_container" "handover" {
  #checkov:skip=CKV2_AZURE_21:Blob reads are logged by the diagnostic setting storage_blob (resource logs, main.tf); the check looks for the legacy Storage Insights, which needs the account key
  name                  = "mnistops-handover"
  storage_account_id    = azurerm_storage_account.this.id
  container_access_type = "private"
}

resource "azurerm_machine_learning_datastore_blobstorage" "handover" {
  name                       = "mnistops_handover"
  workspace_id               = azurerm_machine_learning_workspace.this.id
  storage_container_id       = azurerm_storage_container.handover.id
  description                = "Labelled production data handed over by another env's monitoring (identity-based access)"
  service_data_auth_identity = "WorkspaceSystemAssignedIdentity"
}

resource "azurerm_role_assignment" "cross_env_handover_write" {
  for_each             = toset(var.cross_env_principal_ids)
  scope                = azurerm_storage_container.handover.id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = each.value
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "handover_read" {
  for_each = {
    pipeline  = azurerm_user_assigned_identity.pipeline.principal_id
    cluster   = azurerm_machine_learning_compute_cluster.cpu.identity[0].principal_id
    workspace = azurerm_machine_learning_workspace.this.identity[0].principal_id
  }
  scope                = azurerm_storage_container.handover.id
  role_definition_name = "Storage Blob Data Reader"
  principal_id         = each.value
  principal_type       = "ServicePrincipal"
}
