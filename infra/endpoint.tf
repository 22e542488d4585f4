# The env's managed online endpoint, created empty so that its logs and alert rules exist from the
# first apply. Its deployments (blue/green) and traffic belong to `stage=deploy` / `stage=cd`, which
# find the endpoint by name (terraform output endpoint_name -> azure.endpoint_name): Terraform never
# changes it after creating it.

locals {
  endpoint_name = coalesce(var.endpoint_name, "mnist-${var.environment}-${local.suffix}")
}

resource "azapi_resource" "endpoint" {
  type      = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints@2024-10-01"
  name      = local.endpoint_name
  parent_id = azurerm_machine_learning_workspace.this.id
  location  = azurerm_resource_group.this.location
  tags      = local.tags

  identity {
    type = "SystemAssigned" # what azure-ai-ml's ManagedOnlineEndpoint defaults to
  }

  body = {
    properties = {
      authMode            = "Key"
      publicNetworkAccess = "Enabled"
      description         = "mnistops ${var.environment}: deployments and traffic are managed by stage=cd"
    }
  }

  lifecycle {
    ignore_changes = [body, tags] # traffic, mirror traffic and the rollback tags move with every deploy
  }
}

# No role assignments for the endpoint's identity here: with a system-assigned identity Azure ML gives
# it AcrPull on the workspace registry and Storage Blob Data Reader on the workspace storage itself when
# it creates the endpoint; assigning them again fails the first apply with 409 RoleAssignmentExists
# (learn.microsoft.com/azure/machine-learning/how-to-access-resources-from-endpoints-managed-identities).

# Every request and the containers' console and life-cycle events, into the env's Log Analytics.
resource "azurerm_monitor_diagnostic_setting" "endpoint" {
  name                       = "to-log-analytics"
  target_resource_id         = azapi_resource.endpoint.id
  log_analytics_workspace_id = azurerm_log_analytics_workspace.this.id

  enabled_log {
    category = "AmlOnlineEndpointTrafficLog"
  }
  enabled_log {
    category = "AmlOnlineEndpointConsoleLog"
  }
  enabled_log {
    category = "AmlOnlineEndpointEventLog"
  }
}

# ----------------------------------------------------------------------- alerts

# Who hears an alert: e-mail, and a webhook that queues QA's CI pipeline (an Azure DevOps "Incoming
# WebHook" service connection: jobs/azure-devops/ci.yml triggers on it; for GitHub, a relay that sends
# repository_dispatch, since an action group cannot add an Authorization header).
resource "azurerm_monitor_action_group" "retrain" {
  name                = "ag-${local.name}-retrain"
  resource_group_name = azurerm_resource_group.this.name
  short_name          = substr("mnist-${var.environment}", 0, 12)
  tags                = local.tags

  dynamic "webhook_receiver" {
    for_each = var.ci_webhook_url == null ? [] : [var.ci_webhook_url]
    content {
      name                    = "queue-qa-ci"
      service_uri             = webhook_receiver.value
      use_common_alert_schema = true
    }
  }

  dynamic "email_receiver" {
    for_each = { for i, address in var.alert_emails : tostring(i) => address }
    content {
      name                    = "email-${email_receiver.key}"
      email_address           = email_receiver.value
      use_common_alert_schema = true
    }
  }
}

# p99 latency of the endpoint (all deployments), against the same budget as monitor.thresholds.max_p99_ms.
resource "azurerm_monitor_metric_alert" "p99_latency" {
  name                = "${local.endpoint_name}-p99-latency"
  resource_group_name = azurerm_resource_group.this.name
  scopes              = [azapi_resource.endpoint.id]
  description         = "p99 request latency of ${local.endpoint_name} above ${var.alert_p99_latency_ms} ms over 5 minutes"
  severity            = 2
  frequency           = "PT1M"
  window_size         = "PT5M"
  tags                = local.tags

  criteria {
    metric_namespace = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
    metric_name      = "RequestLatency_P99"
    aggregation      = "Average"
    operator         = "GreaterThan"
    threshold        = var.alert_p99_latency_ms
  }

  action {
    action_group_id = azurerm_monitor_action_group.retrain.id
  }
}

# Answers with a 5xx status, per minute (averaged over 5 minutes). The share of failed requests
# (monitor.thresholds.max_error_rate) is judged by stage=monitor over its window.
resource "azurerm_monitor_metric_alert" "server_errors" {
  name                = "${local.endpoint_name}-5xx"
  resource_group_name = azurerm_resource_group.this.name
  scopes              = [azapi_resource.endpoint.id]
  description         = "more than ${var.alert_5xx_per_minute} answers per minute with a 5xx status from ${local.endpoint_name} over 5 minutes"
  severity            = 1
  frequency           = "PT1M"
  window_size         = "PT5M"
  tags                = local.tags

  criteria {
    metric_namespace = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
    metric_name      = "RequestsPerMinute"
    aggregation      = "Average"
    operator         = "GreaterThan"
    threshold        = var.alert_5xx_per_minute

    dimension {
      name     = "statusCodeClass"
      operator = "Include"
      values   = ["5xx"]
    }
  }

  action {
    action_group_id = azurerm_monitor_action_group.retrain.id
  }
}
