// Azure AI Search: the knowledge index the agent searches. Microsoft Entra ID access only.

param location string
param tags object
param name string
param tier string
param replicaCount int
param semanticSearch string

resource search 'Microsoft.Search/searchServices@2023-11-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: tier
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    replicaCount: replicaCount
    partitionCount: 1
    hostingMode: 'default'
    publicNetworkAccess: 'enabled'
    disableLocalAuth: true // no admin or query keys: the app uses its managed identity
    semanticSearch: semanticSearch
  }
}

output name string = search.name
output id string = search.id
output endpoint string = 'https://${search.name}.search.windows.net'
