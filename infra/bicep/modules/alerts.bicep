// The alerts of the operations runbook ("アラート対応"), sent to one action group.
// The thresholds are the runbook's numbers: change them here and in the runbook together.

param location string
param tags object
@description('Alert names start with it, e.g. agent-alert-prd.')
param namePrefix string
param actionGroupName string
param actionGroupShortName string
param alertEmail string
param appInsightsId string
param serviceBusId string
param queueName string
@description('The continuation queue (later steps of started jobs): watched with queueName.')
param continuationQueueName string

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: actionGroupShortName
    enabled: true
    emailReceivers: [
      {
        name: 'operations'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

// エラー率 > 5% (5分間): failed / all function executions (HTTP and queue steps alike), in percent.
var errorRateQuery = '''
requests
| summarize total = count(), failed = countif(success == false)
| where total > 0
| project failure_percent = 100.0 * failed / total
'''

resource errorRate 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-error-rate'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: '${namePrefix}: error rate over 5% for 5 minutes'
    description: 'Runbook: エラー率アラート. Check the failures in Application Insights, find the common pattern, decide whether it is transient, roll back if needed.'
    severity: 1
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: errorRateQuery
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'failure_percent'
          operator: 'GreaterThan'
          threshold: 5
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// キュー長 > 100: steps waiting on agent-jobs.
resource queueBacklog 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-queue-backlog'
  location: 'global'
  tags: tags
  properties: {
    description: 'Runbook: キュー滞留アラート. More than 100 active messages on ${queueName} or ${continuationQueueName}: check the function app, raise its maximum instance count, check the job failure rate, cancel jobs if needed.'
    severity: 2
    enabled: true
    scopes: [
      serviceBusId
    ]
    evaluationFrequency: 'PT1M'
    windowSize: 'PT5M'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'active-messages'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'ActiveMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                queueName
                continuationQueueName
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 100
          timeAggregation: 'Average'
        }
      ]
    }
    actions: [
      {
        actionGroupId: actionGroup.id
      }
    ]
  }
}

// Any dead-lettered step: a step failed its 10 deliveries (or expired). The sweep timer acts on
// it; an operator should know it happened.
resource deadLetters 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-dead-letters'
  location: 'global'
  tags: tags
  properties: {
    description: 'Dead-lettered messages on ${queueName} or ${continuationQueueName}. Runbook: ジョブが完了しない. Read the dead-letter reason, fix the cause, resubmit the job.'
    severity: 2
    enabled: true
    scopes: [
      serviceBusId
    ]
    evaluationFrequency: 'PT1M'
    windowSize: 'PT5M'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'dead-lettered-messages'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                queueName
                continuationQueueName
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Maximum'
        }
      ]
    }
    actions: [
      {
        actionGroupId: actionGroup.id
      }
    ]
  }
}

// 月間トークン数が予算の 80% 超過, per tenant. The app records each tenant's month-to-date tokens as
// a percentage of its own budget (MONTHLY_TOKEN_BUDGET / TENANT_TOKEN_BUDGETS) in the custom metric
// agent.budget.used at every committed step, from the idempotent monthly ledger, so the alert reads
// the exact month-to-date figure; a log query alone could not, as it sees at most two days of data.
var tokenBudgetQuery = '''
customMetrics
| where name == "agent.budget.used"
| where timestamp >= startofmonth(now())
| extend tenant = tostring(customDimensions.tenant)
| summarize budget_percent = max(valueMax) by tenant
'''

resource tokenBudget 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-token-budget'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: '${namePrefix}: monthly tokens over 80% of the budget'
    description: 'Runbook: トークン使用量超過. A tenant used over 80% of its monthly token budget (MONTHLY_TOKEN_BUDGET / TENANT_TOKEN_BUDGETS). Find the jobs using the most tokens, tighten rate limits, stop unneeded jobs, consider a larger budget.'
    severity: 2
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'P1D'
    criteria: {
      allOf: [
        {
          query: tokenBudgetQuery
          timeAggregation: 'Maximum'
          metricMeasureColumn: 'budget_percent'
          operator: 'GreaterThan'
          threshold: 80
          dimensions: [
            {
              name: 'tenant'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// Stuck jobs: the stuck-job detector (timer stuck_jobs) found a job whose next step was lost and
// re-sent it (or failed the job past STUCK_MAX_REPAIRS). Each one is an agent.jobs.stuck count.
var stuckJobsQuery = '''
customMetrics
| where name == "agent.jobs.stuck"
| extend action = tostring(customDimensions.action)
| summarize stuck_jobs = sum(valueSum) by action
'''

resource stuckJobs 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-stuck-jobs'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: '${namePrefix}: stuck jobs repaired or failed'
    description: 'Runbook: ジョブが完了しない. The stuck-job detector found jobs with no message for their next step and re-sent it (or failed the job). Run `agentctl jobs stuck`, read the logs of those jobs (event job_stuck_*), look for crashes or purged messages.'
    severity: 2
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: stuckJobsQuery
          timeAggregation: 'Total'
          metricMeasureColumn: 'stuck_jobs'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'action'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

output actionGroupId string = actionGroup.id
