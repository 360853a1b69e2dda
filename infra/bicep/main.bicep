// agent-framework: one Function App (Flex Consumption) with the Service Bus queue, Blob Storage,
// AI Search, Azure OpenAI and monitoring it needs, plus the runbook's alerts.
//
//   az group create --name agent-framework-prd-rg --location japaneast
//   az deployment group create --resource-group agent-framework-prd-rg \
//     --template-file infra/bicep/main.bicep --parameters infra/bicep/main.prd.bicepparam
//
// (The runbook's `--parameters environment=prd location=japaneast` works too; az then asks for
// alertEmail.) docs/deploy.md has the whole procedure. Every connection is identity-based: no
// keys or connection strings with secrets reach app settings or outputs.
targetScope = 'resourceGroup'

// --- parameters ----------------------------------------------------------------------------------

@description('Deployment environment; every resource name is derived from it (agent-sb-prd, agent-api-prd, ...).')
@allowed([
  'dev'
  'stg'
  'prd'
])
param environment string

@description('Azure region of every resource (the runbook uses japaneast).')
param location string = resourceGroup().location

@description('Appended to the globally unique names (Function App, Service Bus, Search, OpenAI) only when a runbook name is already taken elsewhere, e.g. "-contoso".')
@maxLength(12)
param nameSuffix string = ''

@description('Email address that receives the alerts of the operations runbook.')
param alertEmail string

@description('Optional Microsoft Entra object id of the operators (ideally a group) who run agentctl and the runbook\'s az commands; they get blob, Service Bus and index data roles.')
param operatorPrincipalId string = ''

@description('What operatorPrincipalId is.')
@allowed([
  'Group'
  'User'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'Group'

@description('Default monthly token budget of a tenant (MONTHLY_TOKEN_BUDGET); the token alert fires at 80% of it.')
@minValue(1)
param monthlyTokenBudget int = 5000000

@description('Per-tenant monthly budgets that override the default, e.g. {"acme": 20000000} (TENANT_TOKEN_BUDGETS).')
param tenantTokenBudgets object = {}

@description('Flex Consumption: the most instances the app scales out to (the runbook\'s "number of workers").')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Flex Consumption: memory of one instance; CPU grows with it (512 = 0.25 core, 2048 = 1 core, 4096 = 2 cores).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Flex Consumption: concurrent HTTP requests one instance takes before another is added.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 16

@description('Overrides host.json extensions.serviceBus.maxConcurrentCalls (agent steps run at once per instance); 0 keeps host.json.')
@minValue(0)
param serviceBusMaxConcurrentCalls int = 0

@description('API keys of the REST callers as JSON ({"<key>": {"tenant": "...", "role": "submitter|operator"}}); empty leaves API_KEYS unset.')
@secure()
param apiKeys string = ''

@description('Further app settings this environment keeps across deployments, e.g. {"RATE_LIMIT_PER_MINUTE": "300", "TENANT_POLICIES": "{...}"}. A deployment replaces all app settings, so a value set only with `az functionapp config appsettings set` lasts until the next one. Values must be strings; no secrets (use apiKeys).')
param appSettingsOverrides object = {}

@description('Storage redundancy. The runbook relies on geo-redundant storage for checkpoints and backups.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param storageSku string = 'Standard_GRS'

@description('Days a deleted blob or container stays recoverable (soft delete).')
@minValue(1)
@maxValue(365)
param softDeleteRetentionDays int = 14

@description('Days older blob versions are kept before the lifecycle policy deletes them.')
@minValue(1)
param versionRetentionDays int = 30

@description('Days Log Analytics keeps logs and metrics.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 90

@description('AI Search pricing tier (basic or above supports semantic ranking).')
@allowed([
  'basic'
  'standard'
  'standard2'
  'standard3'
])
param searchSku string = 'basic'

@description('AI Search replicas: 2 gives the query SLA, 3 the query and indexing SLA.')
@minValue(1)
@maxValue(12)
param searchReplicaCount int = 1

@description('Semantic ranker plan of AI Search.')
@allowed([
  'free'
  'standard'
])
param semanticSearch string = 'free'

@description('AI Search index the agent searches (SEARCH_INDEX_NAME).')
param searchIndexName string = 'knowledge'

@description('Chat model deployment (AZURE_OPENAI_DEPLOYMENT).')
param chatDeploymentName string = 'gpt-4o-mini'
param chatModelName string = 'gpt-4o-mini'
param chatModelVersion string = '2024-07-18'
@description('Deployment type of the chat model: GlobalStandard, DataZoneStandard or Standard (regional).')
param chatSkuName string = 'GlobalStandard'
@description('Chat model capacity in thousands of tokens per minute.')
@minValue(1)
param chatCapacity int = 30

@description('Embedding model deployment (AZURE_OPENAI_EMBEDDING_DEPLOYMENT).')
param embeddingDeploymentName string = 'text-embedding-3-small'
param embeddingModelName string = 'text-embedding-3-small'
param embeddingModelVersion string = '1'
param embeddingSkuName string = 'GlobalStandard'
@minValue(1)
param embeddingCapacity int = 30
@description('Vector size the embedding model returns and the search index stores (EMBEDDING_DIMENSIONS); 1536 for text-embedding-3-small.')
param embeddingDimensions int = 1536

@description('NCRONTAB (UTC) schedules of the maintenance timers.')
param backupSchedule string = '0 0 18 * * *'
param dlqSweepSchedule string = '0 */15 * * * *'
param weeklyChecksSchedule string = '0 0 0 * * 1'
param retentionSchedule string = '0 30 18 * * *'
@description('NCRONTAB (UTC) of the timer that submits the tenants\' scheduled jobs.')
param schedulesSchedule string = '0 * * * * *'
param stuckJobsSchedule string = '0 */5 * * * *'

@description('Put an API Management gateway (modules/apim.bicep) in front of the Function App, so the request and failed-authentication limits hold across every instance (docs/security.md, "Limits").')
param enableApiManagement bool = false

@description('API Management tier (one unit). Not Consumption: that tier has no rate-limit-by-key. Developer has no SLA.')
@allowed([
  'Developer'
  'Basic'
  'BasicV2'
  'Standard'
  'StandardV2'
  'Premium'
])
param apiManagementSku string = 'BasicV2'

@description('Publisher contact of the API Management service; empty uses alertEmail.')
param apiManagementPublisherEmail string = ''
param apiManagementPublisherName string = 'agent-framework operators'

@description('Gateway limit: requests per minute of one key. Keep it equal to RATE_LIMIT_PER_MINUTE (default 600).')
@minValue(1)
param apiManagementKeyCallsPerMinute int = 600

@description('Gateway limit: failed authentications (401) per minute from one client address. Keep it equal to AUTH_FAILURES_PER_MINUTE (default 20).')
@minValue(1)
param apiManagementAuthFailuresPerMinute int = 20

param tags object = {}

// --- names: derived from the environment here and nowhere else ----------------------------------

var names = {
  functionApp: 'agent-api-${environment}${nameSuffix}'
  plan: 'agent-plan-${environment}'
  serviceBus: 'agent-sb-${environment}${nameSuffix}'
  search: 'agent-search-${environment}${nameSuffix}'
  openai: 'agent-openai-${environment}${nameSuffix}'
  logs: 'agent-logs-${environment}'
  appInsights: 'agent-appi-${environment}'
  identity: 'agent-id-${environment}'
  actionGroup: 'agent-ag-${environment}'
  actionGroupShortName: 'agent-${environment}' // at most 12 characters
  alertPrefix: 'agent-alert-${environment}'
  // Global: the gateway answers at <name>.azure-api.net.
  apiManagement: 'agent-apim-${environment}${nameSuffix}'
  // Storage names are global, lowercase alphanumerics, 3-24 chars: 7 + 3 + 13 = 23.
  storage: take(toLower('agentst${environment}${uniqueString(resourceGroup().id)}'), 24)
}

// The queue contract of the step engine (ARCHITECTURE.md): one message per step, message id
// "{job_id}:{step}" deduplicated for 10 minutes, dead-lettered after 10 deliveries.
// The app reads the same numbers (QUEUE_*) so the embedded queue behaves like this one.
var queue = {
  name: 'agent-jobs'
  continuationName: 'agent-continuations'
  maxDeliveryCount: 10
  lockDuration: 'PT5M'
  lockDurationSeconds: 300
  duplicateDetectionHistoryTimeWindow: 'PT10M'
  duplicateWindowSeconds: 600
}

var deploymentContainer = 'app-package'

var allTags = union(tags, {
  application: 'agent-framework'
  environment: environment
})

// --- resources -----------------------------------------------------------------------------------

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: names.identity
  location: location
  tags: allTags
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    tags: allTags
    workspaceName: names.logs
    appInsightsName: names.appInsights
    retentionInDays: logRetentionDays
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    tags: allTags
    name: names.storage
    redundancy: storageSku
    deploymentContainer: deploymentContainer
    softDeleteRetentionDays: softDeleteRetentionDays
    versionRetentionDays: versionRetentionDays
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  params: {
    location: location
    tags: allTags
    name: names.serviceBus
    queueName: queue.name
    continuationQueueName: queue.continuationName
    maxDeliveryCount: queue.maxDeliveryCount
    lockDuration: queue.lockDuration
    duplicateDetectionHistoryTimeWindow: queue.duplicateDetectionHistoryTimeWindow
  }
}

module search 'modules/search.bicep' = {
  name: 'search'
  params: {
    location: location
    tags: allTags
    name: names.search
    tier: searchSku
    replicaCount: searchReplicaCount
    semanticSearch: semanticSearch
  }
}

module openai 'modules/openai.bicep' = {
  name: 'openai'
  params: {
    location: location
    tags: allTags
    name: names.openai
    chatDeploymentName: chatDeploymentName
    chatModelName: chatModelName
    chatModelVersion: chatModelVersion
    chatSkuName: chatSkuName
    chatCapacity: chatCapacity
    embeddingDeploymentName: embeddingDeploymentName
    embeddingModelName: embeddingModelName
    embeddingModelVersion: embeddingModelVersion
    embeddingSkuName: embeddingSkuName
    embeddingCapacity: embeddingCapacity
  }
}

module roles 'modules/roles.bicep' = {
  name: 'roles'
  params: {
    principalId: identity.properties.principalId
    storageAccountName: storage.outputs.name
    serviceBusName: serviceBus.outputs.name
    searchName: search.outputs.name
    openaiName: openai.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
    operatorPrincipalId: operatorPrincipalId
    operatorPrincipalType: operatorPrincipalType
  }
}

// App settings the app reads (shared/settings.py). Identity-based connections only: the
// __credential/__clientId pairs make the Functions host use the user-assigned identity, and
// AZURE_CLIENT_ID makes the app's own DefaultAzureCredential pick the same one.
var baseAppSettings = {
  APP_ENV: 'production'
  AZURE_CLIENT_ID: identity.properties.clientId

  AzureWebJobsStorage__blobServiceUri: storage.outputs.blobEndpoint
  AzureWebJobsStorage__queueServiceUri: storage.outputs.queueEndpoint
  AzureWebJobsStorage__tableServiceUri: storage.outputs.tableEndpoint
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.properties.clientId

  ServiceBusConnection__fullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
  ServiceBusConnection__credential: 'managedidentity'
  ServiceBusConnection__clientId: identity.properties.clientId
  AGENT_JOBS_QUEUE: queue.name
  AGENT_CONTINUATIONS_QUEUE: queue.continuationName
  QUEUE_MAX_DELIVERY_COUNT: string(queue.maxDeliveryCount)
  QUEUE_LOCK_SECONDS: string(queue.lockDurationSeconds)
  QUEUE_DUPLICATE_WINDOW_SECONDS: string(queue.duplicateWindowSeconds)

  SEARCH_ENDPOINT: search.outputs.endpoint
  SEARCH_INDEX_NAME: searchIndexName
  AZURE_OPENAI_ENDPOINT: openai.outputs.endpoint
  AZURE_OPENAI_DEPLOYMENT: openai.outputs.chatDeploymentName
  AZURE_OPENAI_EMBEDDING_DEPLOYMENT: openai.outputs.embeddingDeploymentName
  EMBEDDING_DIMENSIONS: string(embeddingDimensions)

  // The connection string identifies the Application Insights resource; it is not a secret.
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.properties.clientId};Authorization=AAD'

  MONTHLY_TOKEN_BUDGET: string(monthlyTokenBudget)
  TENANT_TOKEN_BUDGETS: string(tenantTokenBudgets)
  BACKUP_SCHEDULE: backupSchedule
  DLQ_SWEEP_SCHEDULE: dlqSweepSchedule
  WEEKLY_CHECKS_SCHEDULE: weeklyChecksSchedule
  RETENTION_SCHEDULE: retentionSchedule
  SCHEDULES_SCHEDULE: schedulesSchedule
  // AsgiFunctionApp buffers responses: an SSE stream reaches the client only when it ends, so it must end
  // well inside the front end's 230 s request timeout (docs/events.md). Clients resume with Last-Event-ID.
  EVENTS_MAX_STREAM_SECONDS: '25'
  STUCK_JOBS_SCHEDULE: stuckJobsSchedule
}

var concurrencySettings = (serviceBusMaxConcurrentCalls > 0) ? {
  AzureFunctionsJobHost__extensions__serviceBus__maxConcurrentCalls: string(serviceBusMaxConcurrentCalls)
} : {}

// The gateway's host name is known before it exists, so the app can trust it without waiting for
// the gateway (which itself waits for the app's host name): no cycle. *.azurewebsites.net keeps the
// app's own host (the app's default list, less the local names).
var apiManagementGatewayHost = '${names.apiManagement}.azure-api.net'
var gatewaySettings = enableApiManagement ? {
  ALLOWED_HOSTS: string([
    '*.azurewebsites.net'
    apiManagementGatewayHost
  ])
} : {}

var apiKeySettings = empty(apiKeys) ? {} : {
  API_KEYS: apiKeys
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  dependsOn: [
    // The host needs its storage and Service Bus roles before it starts listening.
    roles
  ]
  params: {
    location: location
    tags: allTags
    name: names.functionApp
    planName: names.plan
    identityId: identity.id
    deploymentContainerUrl: '${storage.outputs.blobEndpoint}${deploymentContainer}'
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    appSettings: union(baseAppSettings, concurrencySettings, gatewaySettings, appSettingsOverrides, apiKeySettings)
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    location: location
    tags: allTags
    namePrefix: names.alertPrefix
    actionGroupName: names.actionGroup
    actionGroupShortName: names.actionGroupShortName
    alertEmail: alertEmail
    appInsightsId: monitoring.outputs.appInsightsId
    serviceBusId: serviceBus.outputs.id
    queueName: queue.name
    continuationQueueName: queue.continuationName
  }
}

module apim 'modules/apim.bicep' = if (enableApiManagement) {
  name: 'apim'
  params: {
    location: location
    tags: allTags
    name: names.apiManagement
    sku: apiManagementSku
    publisherEmail: empty(apiManagementPublisherEmail) ? alertEmail : apiManagementPublisherEmail
    publisherName: apiManagementPublisherName
    backendHostname: functionApp.outputs.defaultHostname
    keyCallsPerMinute: apiManagementKeyCallsPerMinute
    authFailuresPerMinute: apiManagementAuthFailuresPerMinute
  }
}

// --- outputs (no secrets) ------------------------------------------------------------------------

output functionAppName string = functionApp.outputs.name
output functionAppHostname string = functionApp.outputs.defaultHostname
@description('Where callers send requests when API Management is enabled (https://<name>.azure-api.net; the API is under /api); empty otherwise.')
output apiGatewayUrl string = enableApiManagement ? 'https://${apiManagementGatewayHost}' : ''
output serviceBusNamespace string = serviceBus.outputs.name
output serviceBusFullyQualifiedNamespace string = serviceBus.outputs.fullyQualifiedNamespace
output agentJobsQueue string = queue.name
output storageAccountName string = storage.outputs.name
output searchEndpoint string = search.outputs.endpoint
output openAiEndpoint string = openai.outputs.endpoint
output identityClientId string = identity.properties.clientId
output appInsightsName string = monitoring.outputs.appInsightsName
@description('Name of the app setting that carries the Application Insights connection string.')
output appInsightsConnectionStringSetting string = 'APPLICATIONINSIGHTS_CONNECTION_STRING'
