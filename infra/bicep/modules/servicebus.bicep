// Service Bus: the agent-jobs queue carries the first step of each job, the agent-continuations
// queue every later step (its own trigger), so under overload started jobs finish first.
// Standard tier: duplicate detection (message_id "{job_id}:{step}") needs Standard or Premium.

param location string
param tags object
param name string
param queueName string
@description('The queue of later steps of started jobs; same contract as queueName.')
param continuationQueueName string
param maxDeliveryCount int
@description('Peek-lock duration (ISO 8601), at most PT5M.')
param lockDuration string
@description('Duplicate detection window (ISO 8601).')
param duplicateDetectionHistoryTimeWindow string

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    minimumTlsVersion: '1.2'
    disableLocalAuth: true // no SAS keys: Microsoft Entra ID only
    publicNetworkAccess: 'Enabled'
  }
}

// Both queues carry step messages with the same contract: the step engine does not care which one.
var queueProperties = {
  // Past 10 deliveries a step is dead-lettered; the sweep timer decides what happens next.
  maxDeliveryCount: maxDeliveryCount
  lockDuration: lockDuration
  // Set at creation only: Service Bus cannot turn duplicate detection on or off later.
  requiresDuplicateDetection: true
  duplicateDetectionHistoryTimeWindow: duplicateDetectionHistoryTimeWindow
  deadLetteringOnMessageExpiration: true
  defaultMessageTimeToLive: 'P14D'
  requiresSession: false
  enablePartitioning: false
  enableBatchedOperations: true
  maxSizeInMegabytes: 1024
}

resource queue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: queueName
  properties: queueProperties
}

resource continuationQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: continuationQueueName
  properties: queueProperties
}

output name string = namespace.name
output id string = namespace.id
output queueName string = queue.name
output continuationQueueName string = continuationQueue.name
output fullyQualifiedNamespace string = '${namespace.name}.servicebus.windows.net'
