// Development: a personal or team sandbox in Azure.
using 'main.bicep'

param environment = 'dev'
param location = 'japaneast'
param alertEmail = 'dev-team@example.com'
param apiKeys = readEnvironmentVariable('AGENT_API_KEYS', '')

param monthlyTokenBudget = 500000

param maximumInstanceCount = 10
param instanceMemoryMB = 2048

param storageSku = 'Standard_LRS'
param softDeleteRetentionDays = 7
param versionRetentionDays = 7
param logRetentionDays = 30
param searchSku = 'basic'
param chatCapacity = 10
param embeddingCapacity = 10
