# QA: where CI trains, gates and smoke-tests. subscription_id comes from the pipeline (TF_VAR_subscription_id).
environment         = "qa"
location            = "westeurope"
storage_replication = "LRS"
registry_sku        = "Basic"
cluster_vm_size     = "Standard_DS3_v2"
cluster_vm_priority = "LowPriority"
cluster_max_nodes   = 2
log_retention_days  = 30
pipeline_federated_subjects = [
  # { name = "ado-mnistops-qa", issuer = "https://vstoken.dev.azure.com/<organization id>", subject = "sc://<org>/<project>/mnistops-qa" },
  # { name = "github-qa", issuer = "https://token.actions.githubusercontent.com", subject = "repo:<owner>/<repo>:environment:qa" },
]
# PROD's CI/CD identity (`terraform output pipeline_principal_id` of PROD, after PROD's first apply):
# it promotes QA's approved versions and hands PROD's labelled data to QA.
cross_env_principal_ids = []
