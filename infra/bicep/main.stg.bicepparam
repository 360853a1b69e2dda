// Staging: the runbook's "test in staging first" step. Same shape as production, smaller limits.
using 'main.bicep'

param environment = 'stg'
param location = 'japaneast'
param alertEmail = 'dev-team@example.com'
param apiKeys = readEnvironmentVariable('AGENT_API_KEYS', '')

param monthlyTokenBudget = 1000000

param maximumInstanceCount = 20
param instanceMemoryMB = 2048

param storageSku = 'Standard_LRS'
param softDeleteRetentionDays = 7
param logRetentionDays = 30
param searchSku = 'basic'
