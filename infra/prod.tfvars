# PROD: receives only what QA approved. subscription_id comes from the pipeline (TF_VAR_subscription_id).
environment         = "prod"
location            = "westeurope"
storage_replication = "ZRS"
registry_sku        = "Premium"
cluster_vm_size     = "Standard_DS3_v2"
cluster_vm_priority = "Dedicated"
cluster_max_nodes   = 4
log_retention_days  = 90
pipeline_federated_subjects = [
  # { name = "ado-mnistops-prod", issuer = "https://vstoken.dev.azure.com/<organization id>", subject = "sc://<org>/<project>/mnistops-prod" },
  # { name = "github-prod", issuer = "https://token.actions.githubusercontent.com", subject = "repo:<owner>/<repo>:environment:prod" },
]
alert_emails = []
# ci_webhook_url: a secret pipeline variable (TF_VAR_ci_webhook_url), the incoming webhook that queues QA's CI
