// Production: az deployment group create --resource-group agent-framework-prd-rg \
//   --template-file infra/bicep/main.bicep --parameters infra/bicep/main.prd.bicepparam
using 'main.bicep'

param environment = 'prd'
param location = 'japaneast'
param alertEmail = 'oncall@example.com'

// The REST callers' keys never live in git. There is deliberately no default: a deployment
// without AGENT_API_KEYS in the environment fails instead of removing API_KEYS from the app.
param apiKeys = readEnvironmentVariable('AGENT_API_KEYS')

param monthlyTokenBudget = 5000000
param tenantTokenBudgets = {}

param maximumInstanceCount = 40
param instanceMemoryMB = 2048
param httpPerInstanceConcurrency = 16

param storageSku = 'Standard_GRS'
param softDeleteRetentionDays = 14
param logRetentionDays = 90
param searchSku = 'basic'

// Deployment-wide request and failed-authentication limits through API Management (docs/deploy.md,
// "API gateway"); off by default because the gateway bills per unit (BasicV2) whether used or not.
// param enableApiManagement = true
