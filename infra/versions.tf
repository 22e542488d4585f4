# Terraform, its providers and where the state lives. The state is remote (an Azure storage account
# per env, created once by hand: see the README), one key per env, passed by the pipeline:
#   terraform init -backend-config=resource_group_name=... -backend-config=storage_account_name=... \
#     -backend-config=container_name=tfstate -backend-config=key=mnistops-qa.tfstate -backend-config=use_azuread_auth=true

terraform {
  required_version = ">= 1.9"
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.0"
    }
    azapi = { # the online endpoint: azurerm has no resource for Azure ML online endpoints
      source  = "Azure/azapi"
      version = "~> 2.0"
    }
  }
  backend "azurerm" {}
}

provider "azurerm" {
  features {
    key_vault {
      purge_soft_delete_on_destroy = false # purge protection is on: a destroyed vault stays recoverable
    }
  }
  subscription_id = var.subscription_id
}

provider "azapi" {
  subscription_id = var.subscription_id
}
